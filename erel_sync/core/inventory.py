"""Host inventories for `plan --hosts`: a YAML/JSON list of host ids with labels.

Pure (parses bytes). Accepts `{hosts: [{id, labels}]}` or a bare list; problems are reported
like config problems, with file and line.
"""

from __future__ import annotations

from types import MappingProxyType

from erel_sync.core.matching import HostIdentity
from erel_sync.model.names import HOST_ID_RE, LABEL_KEY_RE, LABEL_VALUE_RE
from erel_sync.model.problems import ConfigError, Problem, json_path
from erel_sync.model.yamldocs import parse_documents


def parse_inventory(file: str, data: bytes) -> list[HostIdentity]:
    docs, problems = parse_documents(file, data)
    if problems:
        raise ConfigError(problems)
    if len(docs) != 1:
        raise ConfigError([Problem(file, message="expected one YAML document listing hosts")])
    doc = docs[0]
    items = doc.data.get("hosts") if isinstance(doc.data, dict) else doc.data
    prefix: tuple[str | int, ...] = ("hosts",) if isinstance(doc.data, dict) else ()
    if not isinstance(items, list):
        raise ConfigError([Problem(file, doc.line, doc.col, "$", "expected a list of hosts")])
    hosts: list[HostIdentity] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        path = (*prefix, i)

        def bad(message: str, path: tuple[str | int, ...] = path) -> None:
            problems.append(Problem(file, *doc.where(path), json_path(path), message))

        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            bad("each host needs an `id` string")
            continue
        host_id = item["id"]
        labels = item.get("labels", {})
        if not HOST_ID_RE.fullmatch(host_id):
            bad(f"invalid host id {host_id!r}")
        if host_id in seen:
            bad(f"host {host_id!r} is listed twice")
        seen.add(host_id)
        if not isinstance(labels, dict) or not all(
            isinstance(k, str)
            and isinstance(v, str)
            and LABEL_KEY_RE.fullmatch(k)
            and LABEL_VALUE_RE.fullmatch(v)
            for k, v in labels.items()
        ):
            bad("labels must map label keys to string values")
            continue
        hosts.append(HostIdentity(host_id, MappingProxyType(dict(labels))))
    if problems:
        raise ConfigError(problems)
    return hosts
