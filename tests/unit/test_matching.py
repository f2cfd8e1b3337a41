"""Host -> group matching: literal beats glob beats selector; ties are ambiguous."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from erel_sync.core.matching import AMBIGUOUS, UNASSIGNED, HostIdentity, match_group
from erel_sync.model.validate import SourceFile, validate_sources
from tests.configrepo import group_yaml, release_yaml

GROUPS = {
    "r.yaml": release_yaml(),
    "literal.yaml": group_yaml(name="literal", hosts="[web-7]"),
    "glob.yaml": group_yaml(name="glob", hosts="['web-*']"),
    "sel.yaml": group_yaml(name="sel", hosts="[]", extra="  selector: {labels: {role: db}}\n"),
    "sel2.yaml": group_yaml(
        name="sel2",
        hosts="[]",
        extra="  selector:\n    expressions: [{key: zone, operator: In, values: [z1]}]\n",
    ),
    "notin.yaml": group_yaml(
        name="notin",
        hosts="[]",
        extra="  selector:\n    labels: {role: batch}\n"
        "    expressions:\n      - {key: region, operator: NotIn, values: [eu]}\n"
        "      - {key: gpu, operator: DoesNotExist}\n",
    ),
}
STATE = validate_sources([SourceFile(p, c.encode()) for p, c in GROUPS.items()]).require()


def host(host_id: str, **labels: str) -> HostIdentity:
    return HostIdentity(host_id, MappingProxyType(labels))


@pytest.mark.parametrize(
    ("h", "group", "how"),
    [
        (host("web-7", role="db"), "literal", "host"),
        (host("web-3", role="db"), "glob", "glob"),
        (host("db-1", role="db"), "sel", "selector"),
        (host("b-1", role="batch", region="us"), "notin", "selector"),
        (host("b-2", role="batch", region="eu"), None, UNASSIGNED),
        (host("b-3", role="batch", gpu="yes"), None, UNASSIGNED),
        (host("x-1"), None, UNASSIGNED),
        (host("db-2", role="db", zone="z1"), None, AMBIGUOUS),
    ],
)
def test_match(h: HostIdentity, group: str | None, how: str) -> None:
    m = match_group(STATE, h)
    assert (m.group, m.how) == (group, how)
    if how == AMBIGUOUS:
        assert m.candidates == ("sel", "sel2")
