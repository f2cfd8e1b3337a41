"""Test-wide set-up: the private RabbitMQ node fixtures live in `tests.rabbit`; rebar3 is found
where `make setup` puts it when it is not installed system-wide (`build/tools/bin`), so a bare
`pytest` works as well as `make test`."""

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.rabbit"]

_TOOLS = Path(__file__).resolve().parents[1] / "build" / "tools" / "bin"
if _TOOLS.is_dir() and str(_TOOLS) not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = f"{_TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The random order's seed, even under `-q` (pytest-randomly prints it only in the header,
    which `-q` hides): `pytest --randomly-seed=N` replays a failing order."""
    try:
        seed = config.getoption("randomly_seed")
    except ValueError:  # pytest-randomly not installed or disabled with -p no:randomly
        return
    if seed is not None:
        terminalreporter.write_line(f"test order: random, --randomly-seed={seed}")


# How long tasks that are already ending (a connection closing its reader, a cancelled task
# unwinding) may take after the test and its fixtures are done before they count as leaked.
LEAK_GRACE = 2.0


@pytest.fixture(autouse=True)
def _umask_kept() -> Iterator[None]:
    """Fail a test after which the process umask changed: every child started later inherits
    it (a leaked 0177 once made the e2e browser die at start, in whichever test came next)."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    after = os.umask(before)
    assert after == before, f"the test left the process umask at {after:04o} (was {before:04o})"


@pytest.fixture(autouse=True)
def _no_leaked_tasks(request: pytest.FixtureRequest) -> None:
    """Fail an async test that leaves asyncio tasks behind (kopf's tests do the same): a task
    nobody awaits hides its exception and keeps running into the next test. Autouse, so it is
    set up first and checks last, after every other fixture of the test cleaned up."""
    if inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        request.getfixturevalue("_task_leak_check")


@pytest.fixture
async def _task_leak_check() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    left = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
    if left:
        _, left = await asyncio.wait(left, timeout=LEAK_GRACE)
    if left:
        names = sorted(f"{t.get_name()} {t.get_coro()!r:.120}" for t in left)
        for t in left:
            t.cancel()
        pytest.fail(f"{len(left)} asyncio task(s) left pending by the test: {names}")
