"""Every refusal of the loader, each asserting the file, line and JSON path it reports."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml, sha

HELLO = "releases/hello.yaml"
WEB = "groups/web.yaml"


def base_files() -> dict[str, str | bytes]:
    return {HELLO: release_yaml(), WEB: group_yaml()}


def edit(file: str, old: str, new: str) -> dict[str, str | bytes]:
    files = base_files()
    text = files[file]
    assert isinstance(text, str) and old in text, f"{old!r} not in {file}"
    files[file] = text.replace(old, new, 1)
    return files


def add(file: str, content: str | bytes) -> dict[str, str | bytes]:
    return {**base_files(), file: content}


@dataclass
class Case:
    id: str
    files: dict[str, str | bytes]
    file: str
    line: int
    path: str
    message: str


def bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for n in "bcdefghij":
        lines.append(f"{n}: &{n} [{','.join(['*' + prev] * 9)}]")
        prev = n
    return "\n".join(lines) + "\n"


CASES = [
    # --- YAML level
    Case("syntax-error", edit(HELLO, "  name: hello", "  name: [hello"), HELLO, 5, "", "YAML"),
    Case(
        "duplicate-key",
        edit(HELLO, "  name: hello", "  name: hello\n  name: other"),
        HELLO,
        5,
        "$.metadata",
        "duplicate key",
    ),
    Case(
        "alias-bomb",
        add("releases/bomb.yaml", bomb()),
        "releases/bomb.yaml",
        2,
        "",
        "alias expansion",
    ),
    Case(
        "too-large",
        add("releases/big.yaml", "# " + "x" * (1024 * 1024) + "\n"),
        "releases/big.yaml",
        0,
        "",
        "too large",
    ),
    Case(
        "not-utf8",
        add("releases/latin1.yaml", b"apiVersion: erel/v1\nkind: Release # caf\xe9\n"),
        "releases/latin1.yaml",
        2,
        "",
        "UTF-8",
    ),
    Case(
        "custom-tag",
        edit(HELLO, "  name: hello", "  name: !secret hello"),
        HELLO,
        4,
        "$.metadata.name",
        "tag",
    ),
    Case(
        "non-string-key",
        edit(HELLO, "  name: hello", "  name: hello\n  7: seven"),
        HELLO,
        5,
        "$.metadata",
        "keys must be strings",
    ),
    Case(
        "not-a-mapping",
        add("groups/list.yaml", "- a\n- b\n"),
        "groups/list.yaml",
        1,
        "$",
        "mapping",
    ),
    # --- envelope
    Case(
        "unknown-kind",
        add("x/thing.yaml", "apiVersion: erel/v1\nkind: Thing\nmetadata: {name: t}\nspec: {}\n"),
        "x/thing.yaml",
        2,
        "$.kind",
        "unknown kind",
    ),
    Case(
        "missing-kind",
        add("x/nokind.yaml", "apiVersion: erel/v1\nmetadata: {name: t}\n"),
        "x/nokind.yaml",
        1,
        "$",
        "kind",
    ),
    Case(
        "agent-settings-in-repo",
        add(
            "x/agent.yaml",
            "apiVersion: erel/v1\nkind: AgentSettings\nmetadata: {name: a}\nspec: {host_id: h}\n",
        ),
        "x/agent.yaml",
        2,
        "$.kind",
        "belongs on a host",
    ),
    Case(
        "wrong-api-version",
        edit(HELLO, "apiVersion: erel/v1", "apiVersion: erel/v2"),
        HELLO,
        1,
        "$.apiVersion",
        "erel/v1",
    ),
    Case(
        "unknown-top-level-key",
        edit(HELLO, "kind: Release", "kind: Release\nstatus: {}"),
        HELLO,
        3,
        "$.status",
        "unknown field 'status'",
    ),
    Case(
        "unknown-spec-key",
        edit(HELLO, "  versions:", "  colour: blue\n  versions:"),
        HELLO,
        6,
        "$.spec.colour",
        "unknown field 'colour'",
    ),
    Case(
        "missing-spec",
        {
            HELLO: "apiVersion: erel/v1\nkind: Release\nmetadata:\n  name: hello\n",
            WEB: group_yaml(releases=()) + "  allow_empty: true\n",
        },
        HELLO,
        1,
        "$",
        "missing required field 'spec'",
    ),
    Case(
        "missing-name",
        edit(HELLO, "  name: hello", "  labels: {a: b}"),
        HELLO,
        3,
        "$.metadata",
        "missing required field 'name'",
    ),
    # --- names
    Case(
        "name-with-slash",
        edit(HELLO, "  name: hello", "  name: ../etc"),
        HELLO,
        4,
        "$.metadata.name",
        "invalid value '../etc'",
    ),
    Case(
        "name-shell-metachar",
        edit(HELLO, "  name: hello", "  name: 'hello;rm -rf'"),
        HELLO,
        4,
        "$.metadata.name",
        "invalid value",
    ),
    Case(
        "name-too-long",
        edit(HELLO, "  name: hello", "  name: h" + "x" * 63),
        HELLO,
        4,
        "$.metadata.name",
        "at most 63",
    ),
    Case(
        "name-uppercase",
        edit(HELLO, "  name: hello", "  name: Hello"),
        HELLO,
        4,
        "$.metadata.name",
        "invalid value 'Hello'",
    ),
    Case(
        "name-wrong-type",
        edit(HELLO, "  name: hello", "  name: 42"),
        HELLO,
        4,
        "$.metadata.name",
        "expected a string",
    ),
    Case(
        "name-trailing-newline",
        edit(HELLO, "  name: hello", '  name: "hello\\n"'),
        HELLO,
        4,
        "$.metadata.name",
        "invalid value",
    ),
    # --- release fields
    Case(
        "version-number",
        edit(HELLO, '"0.1.0"', "0.1"),
        HELLO,
        7,
        "$.spec.versions[0].version",
        "quote it",
    ),
    Case(
        "version-1.10-number",
        edit(HELLO, '"0.1.0"', "1.10"),
        HELLO,
        7,
        "$.spec.versions[0].version",
        "1.1",
    ),
    Case(
        "version-bad-chars",
        edit(HELLO, '"0.1.0"', '"0.1 beta"'),
        HELLO,
        7,
        "$.spec.versions[0].version",
        "invalid value",
    ),
    Case(
        "missing-sha256",
        edit(HELLO, f"        sha256: {sha('hello0.1.0')}\n", ""),
        HELLO,
        8,
        "$.spec.versions[0].artifact",
        "missing required field 'sha256'",
    ),
    Case(
        "bad-sha256",
        edit(HELLO, sha("hello0.1.0"), "abc123"),
        HELLO,
        10,
        "$.spec.versions[0].artifact.sha256",
        "invalid value 'abc123'",
    ),
    Case(
        "url-scheme-ftp",
        edit(HELLO, "file:///srv/", "ftp://host/"),
        HELLO,
        9,
        "$.spec.versions[0].artifact.url",
        "file://, http:// or https://",
    ),
    Case(
        "url-shell-chars",
        edit(HELLO, "file:///srv/", "file:///srv/$(reboot)/"),
        HELLO,
        9,
        "$.spec.versions[0].artifact.url",
        "invalid value",
    ),
    Case(
        "bad-duration",
        edit(HELLO, "spec:", "spec:\n  stop_timeout: 30 seconds"),
        HELLO,
        6,
        "$.spec.stop_timeout",
        "duration",
    ),
    Case(
        "bad-upgrade-enum",
        edit(HELLO, "spec:", "spec:\n  upgrade: sometimes"),
        HELLO,
        6,
        "$.spec.upgrade",
        "not one of: auto, hot, restart",
    ),
    Case(
        "versions-empty",
        {
            HELLO: "apiVersion: erel/v1\nkind: Release\nmetadata: {name: hello}\nspec:\n  versions: []\n",
            WEB: group_yaml(releases=()) + "  allow_empty: true\n",
        },
        HELLO,
        5,
        "$.spec.versions",
        "non-empty",
    ),
    Case(
        "versions-wrong-type",
        {
            HELLO: "apiVersion: erel/v1\nkind: Release\nmetadata: {name: hello}\nspec:\n  versions: 0.1.0\n",
            WEB: group_yaml(releases=()) + "  allow_empty: true\n",
        },
        HELLO,
        5,
        "$.spec.versions",
        "expected an array",
    ),
    Case(
        "vm-args-cookie",
        edit(HELLO, "spec:", "spec:\n  config:\n    vm_args: {-setcookie: secret}"),
        HELLO,
        7,
        "$.spec.config.vm_args",
        "cookie",
    ),
    Case(
        "health-rpc-bad",
        edit(HELLO, "spec:", "spec:\n  health: {rpc: 'os:cmd(\"reboot\")'}"),
        HELLO,
        6,
        "$.spec.health.rpc",
        "module:function/0",
    ),
    Case(
        "version-listed-twice",
        {HELLO: release_yaml(versions=("0.1.0", "0.1.0")), WEB: group_yaml()},
        HELLO,
        11,
        "$.spec.versions[1].version",
        "listed twice",
    ),
    # --- group fields and references
    Case(
        "group-missing-releases",
        edit(WEB, '  releases:\n    - name: hello\n      version: "0.1.0"\n', ""),
        WEB,
        5,
        "$.spec",
        "missing required field 'releases'",
    ),
    Case(
        "group-no-hosts-or-selector",
        edit(WEB, "  hosts: [web-1]\n", ""),
        WEB,
        6,
        "$.spec",
        "needs `hosts`",
    ),
    Case(
        "group-missing-release",
        edit(WEB, "    - name: hello", "    - name: nosuch"),
        WEB,
        8,
        "$.spec.releases[0].name",
        "no Release named 'nosuch'",
    ),
    Case(
        "group-missing-version",
        edit(WEB, '      version: "0.1.0"', '      version: "9.9.9"'),
        WEB,
        9,
        "$.spec.releases[0].version",
        "has no version '9.9.9'",
    ),
    Case(
        "group-release-twice",
        {HELLO: release_yaml(), WEB: group_yaml(releases=(("hello", "0.1.0"), ("hello", "0.1.0")))},
        WEB,
        10,
        "$.spec.releases[1].name",
        "listed twice",
    ),
    Case(
        "duplicate-release",
        add("more/hello-again.yaml", release_yaml()),
        HELLO,
        4,
        "$.metadata.name",
        "duplicate Release 'hello' (first defined at more/hello-again.yaml:1)",
    ),
    Case(
        "duplicate-group",
        add("groups/web2.yaml", group_yaml(hosts="[web-2]")),
        "groups/web2.yaml",
        4,
        "$.metadata.name",
        "duplicate Group 'web'",
    ),
    Case(
        "host-in-two-groups",
        add("groups/web2.yaml", group_yaml(name="web2")),
        "groups/web2.yaml",
        6,
        "$.spec.hosts[0]",
        "listed in groups 'web' and 'web2'",
    ),
    Case(
        "host-glob-bad-chars",
        edit(WEB, "[web-1]", "['web/*']"),
        WEB,
        6,
        "$.spec.hosts[0]",
        "invalid value 'web/*'",
    ),
    Case(
        "host-glob-unbalanced",
        edit(WEB, "[web-1]", "['web-[12']"),
        WEB,
        6,
        "$.spec.hosts[0]",
        "unbalanced",
    ),
    Case(
        "selector-in-without-values",
        edit(
            WEB,
            "  hosts: [web-1]",
            "  selector:\n    expressions:\n      - {key: role, operator: In}",
        ),
        WEB,
        8,
        "$.spec.selector.expressions[0].operator",
        "In needs `values`",
    ),
    Case(
        "selector-exists-with-values",
        edit(
            WEB,
            "  hosts: [web-1]",
            "  selector:\n    expressions:\n      - {key: role, operator: Exists, values: [a]}",
        ),
        WEB,
        8,
        "$.spec.selector.expressions[0].values",
        "takes no `values`",
    ),
    Case(
        "selector-bad-operator",
        edit(
            WEB,
            "  hosts: [web-1]",
            "  selector:\n    expressions:\n      - {key: role, operator: Maybe}",
        ),
        WEB,
        8,
        "$.spec.selector.expressions[0].operator",
        "not one of",
    ),
    Case(
        "selector-bad-label-key",
        edit(WEB, "  hosts: [web-1]", "  selector:\n    labels: {'-bad key': x}"),
        WEB,
        7,
        "$.spec.selector.labels",
        "invalid value",
    ),
    Case(
        "selector-empty",
        edit(WEB, "  hosts: [web-1]", "  selector: {}"),
        WEB,
        6,
        "$.spec.selector",
        "Label selector",
    ),
    Case(
        "empty-releases-not-allowed",
        {HELLO: release_yaml(), WEB: group_yaml(releases=()) + "  # nothing\n"},
        WEB,
        7,
        "$.spec.releases",
        "allow_empty",
    ),
    Case(
        "suspend-wrong-type",
        edit(WEB, "  hosts: [web-1]", '  hosts: [web-1]\n  suspend: "yes"'),
        WEB,
        7,
        "$.spec.suspend",
        "expected a boolean",
    ),
    Case(
        "max-unavailable-zero",
        edit(WEB, "  hosts: [web-1]", "  hosts: [web-1]\n  rollout: {max_unavailable: 0}"),
        WEB,
        7,
        "$.spec.rollout.max_unavailable",
        "count or a percentage",
    ),
    Case(
        "max-unavailable-zero-percent",
        edit(WEB, "  hosts: [web-1]", "  hosts: [web-1]\n  rollout: {max_unavailable: '0%'}"),
        WEB,
        7,
        "$.spec.rollout.max_unavailable",
        "never roll out",
    ),
]


def load(files: dict[str, str | bytes]):  # type: ignore[no-untyped-def]
    return validate_sources(
        [SourceFile(p, c if isinstance(c, bytes) else c.encode()) for p, c in files.items()]
    )


def test_base_files_are_valid() -> None:
    result = load(base_files())
    assert result.ok, result.problems


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_location(case: Case) -> None:
    result = load(case.files)
    assert not result.ok and result.state is None
    matching = [p for p in result.problems if p.file == case.file and case.message in p.message]
    assert matching, f"no problem in {case.file} mentioning {case.message!r}: {result.problems}"
    p = matching[0]
    assert (p.line, p.path) == (case.line, case.path), str(p)
    assert p.line == 0 or p.col >= 1


def test_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


def test_every_problem_is_reported_at_once() -> None:
    files = base_files()
    files[HELLO] = str(files[HELLO]).replace('"0.1.0"', "0.1")
    files["groups/other.yaml"] = group_yaml(
        name="other", hosts="[web-1]", releases=(("ghost", "1"),)
    )
    files["releases/bad.yaml"] = "a: [\n"
    result = load(files)
    where = {(p.file, p.line) for p in result.problems}
    assert (HELLO, 7) in where
    assert (WEB, 6) in where  # web-1 in groups other and web: reported at the later name
    assert ("groups/other.yaml", 8) in where  # release ghost
    assert ("releases/bad.yaml", 2) in where
    assert len(result.problems) >= 4


def test_alias_bomb_fails_fast() -> None:
    started = time.perf_counter()
    result = load(add("releases/bomb.yaml", bomb()))
    assert not result.ok
    assert time.perf_counter() - started < 0.5


def test_small_aliases_are_allowed() -> None:
    files = edit(
        HELLO, "spec:", "spec:\n  config:\n    sys_config: {hello: &env {a: 1}, extra: *env}"
    )
    result = load(files)
    assert result.ok, result.problems
    assert result.state is not None
    assert dict(result.state.releases["hello"].config.sys_config["extra"]) == {"a": 1}


def test_hidden_folders_and_other_files_are_ignored() -> None:
    files = add(".github/workflows/ci.yml", "on: push\njobs: {}\n")
    files["README.md"] = "not yaml: ["
    result = load(files)
    assert result.ok, result.problems
    assert result.files == 2
