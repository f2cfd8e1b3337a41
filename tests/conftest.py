"""Test-wide set-up: the private RabbitMQ node fixtures live in `tests.rabbit`; rebar3 is found
where `make setup` puts it when it is not installed system-wide (`build/tools/bin`), so a bare
`pytest` works as well as `make test`."""

import os
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
