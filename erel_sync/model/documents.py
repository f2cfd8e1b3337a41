"""Documents <-> specs: build frozen specs from schema-valid documents, and back.

Pure. `release_from_document`/`group_from_document` are called by `model.validate` after the JSON
Schema passed; `*_to_document` produce the normalised form that makes up a snapshot body: sparse
(an optional field at its default is left out), durations in canonical text, keys sorted by
serialisation. Round trip holds: `from_document(to_document(spec)) == spec`.

Sparse, because agents are upgraded one host at a time: an optional field added by a later
erel-sync is absent from the body while it stays at its default, so older agents, whose schemas
refuse unknown fields, keep applying the snapshot. A field or value that an older agent cannot
ignore is listed in `FEATURES` with the version that introduced it; `required_version` turns
the fields a body uses into the `requires` the agent checks (docs/architecture.md,
"Compatibility between versions").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from erel_sync.model.names import Version, format_duration, parse_duration
from erel_sync.model.specs import (
    Artifact,
    DistributionSpec,
    GroupRelease,
    GroupSpec,
    HealthSpec,
    LabelOperator,
    LabelRequirement,
    ReleaseConfig,
    ReleaseSpec,
    ReleaseVersionSpec,
    RolloutSpec,
    Selector,
    UpgradeMode,
    freeze,
    thaw,
)

API_VERSION = "erel/v1"
# Every agent with the compatibility policy reads the documents of this version; a body that
# needs nothing newer carries no `requires`, so it stays readable by agents of this version.
BASELINE_VERSION = "0.1.0"


@dataclass(frozen=True)
class Feature:
    """A field (or some values of one) that agents older than `since` do not understand.

    `path` walks a normalised document; `*` stands for any list item or mapping key, `**` for
    any number of them (none included). With
    `values`, only those values need `since` (a new enum value); without, any value does (the
    field is absent at its default, so present means used)."""

    kind: str
    path: tuple[str, ...]
    since: str
    values: tuple[Any, ...] = ()


# Append a Feature with every optional field (or value) added after BASELINE_VERSION; give the
# version that ships it (a test checks none is newer than this code's own version).
FEATURES: tuple[Feature, ...] = (
    Feature("Group", ("spec", "rollout", "canary"), "0.2.0"),
    Feature("Group", ("spec", "rollout", "pause_after_canary"), "0.2.0"),
    Feature("Group", ("spec", "rollout", "progress_deadline"), "0.2.0"),
    # A secret anywhere in a config: an older agent would render `$secret` as a key, or refuse.
    Feature("Release", ("spec", "config", "sys_config", "**", "$secret"), "0.3.0"),
    Feature("Group", ("spec", "releases", "*", "config", "sys_config", "**", "$secret"), "0.3.0"),
    Feature("Group", ("spec", "recipients"), "0.3.0"),
    Feature("Release", ("spec", "distribution"), "0.3.0"),
    Feature("Group", ("spec", "releases", "*", "distribution"), "0.3.0"),
)


def required_version(
    docs: Iterable[Mapping[str, Any]], features: Iterable[Feature] | None = None
) -> str | None:
    """The oldest erel-sync that understands every feature these documents use (`FEATURES`
    unless given); None when BASELINE_VERSION does."""
    docs = list(docs)
    needed = Version(BASELINE_VERSION)
    for f in FEATURES if features is None else features:
        if Version(f.since) > needed and any(
            d.get("kind") == f.kind and _uses(d, f.path, f.values) for d in docs
        ):
            needed = Version(f.since)
    return None if needed == Version(BASELINE_VERSION) else needed.text


def _uses(node: Any, path: tuple[str, ...], values: tuple[Any, ...]) -> bool:
    if not path:
        return not values or node in values
    head, rest = path[0], path[1:]
    if head == "**":  # any depth, none included
        children = node.values() if isinstance(node, Mapping) else node
        deeper = isinstance(node, Mapping | list) and any(_uses(x, path, values) for x in children)
        return _uses(node, rest, values) or deeper
    if head == "*":
        items = node.values() if isinstance(node, Mapping) else node
        return isinstance(node, Mapping | list) and any(_uses(x, rest, values) for x in items)
    return isinstance(node, Mapping) and head in node and _uses(node[head], rest, values)


def _config(raw: Mapping[str, Any] | None) -> ReleaseConfig:
    raw = raw or {}
    return ReleaseConfig(
        sys_config=freeze(raw.get("sys_config", {})),
        vm_args=MappingProxyType(dict(raw.get("vm_args", {}))),
    )


def _config_doc(config: ReleaseConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if config.sys_config:
        doc["sys_config"] = thaw(config.sys_config)
    if config.vm_args:
        doc["vm_args"] = dict(config.vm_args)
    return doc


def release_from_document(doc: Mapping[str, Any]) -> ReleaseSpec:
    spec = doc["spec"]
    health = spec.get("health", {})
    defaults = HealthSpec()
    return ReleaseSpec(
        name=doc["metadata"]["name"],
        versions=tuple(
            ReleaseVersionSpec(
                version=v["version"],
                artifact=Artifact(
                    url=v["artifact"]["url"],
                    sha256=v["artifact"]["sha256"],
                    size=v["artifact"].get("size"),
                ),
            )
            for v in spec["versions"]
        ),
        upgrade=UpgradeMode(spec.get("upgrade", "auto")),
        health=HealthSpec(
            rpc=health.get("rpc", defaults.rpc),
            timeout=_dur(health.get("timeout"), defaults.timeout),
            probation=_dur(health.get("probation"), defaults.probation),
            start_timeout=_dur(health.get("start_timeout"), defaults.start_timeout),
        ),
        config=_config(spec.get("config")),
        stop_timeout=_dur(spec.get("stop_timeout"), ReleaseSpec.stop_timeout),
        distribution=DistributionSpec.from_json(spec.get("distribution", {})),
    )


def release_to_document(spec: ReleaseSpec) -> dict[str, Any]:
    versions: list[dict[str, Any]] = []
    for v in spec.versions:
        artifact: dict[str, Any] = {"url": v.artifact.url, "sha256": v.artifact.sha256}
        if v.artifact.size is not None:
            artifact["size"] = v.artifact.size
        versions.append({"version": v.version, "artifact": artifact})
    body: dict[str, Any] = {"versions": versions}
    if spec.upgrade != UpgradeMode.AUTO:
        body["upgrade"] = spec.upgrade.value
    defaults = HealthSpec()
    health = {
        k: text
        for k, text, default in (
            ("rpc", spec.health.rpc, defaults.rpc),
            ("timeout", *_durs(spec.health.timeout, defaults.timeout)),
            ("probation", *_durs(spec.health.probation, defaults.probation)),
            ("start_timeout", *_durs(spec.health.start_timeout, defaults.start_timeout)),
        )
        if text != default
    }
    if health:
        body["health"] = health
    stop, default_stop = _durs(spec.stop_timeout, ReleaseSpec.stop_timeout)
    if stop != default_stop:
        body["stop_timeout"] = stop
    if spec.distribution != DistributionSpec():
        body["distribution"] = spec.distribution.to_json()
    if config := _config_doc(spec.config):
        body["config"] = config
    return {
        "apiVersion": API_VERSION,
        "kind": "Release",
        "metadata": {"name": spec.name},
        "spec": body,
    }


def _durs(value: float, default: float) -> tuple[str, str]:
    return format_duration(value), format_duration(default)


def group_from_document(doc: Mapping[str, Any]) -> GroupSpec:
    spec = doc["spec"]
    selector = None
    if "selector" in spec:
        sel = spec["selector"]
        selector = Selector(
            labels=MappingProxyType(dict(sel.get("labels", {}))),
            expressions=tuple(
                LabelRequirement(e["key"], LabelOperator(e["operator"]), tuple(e.get("values", ())))
                for e in sel.get("expressions", ())
            ),
        )
    return GroupSpec(
        name=doc["metadata"]["name"],
        hosts=tuple(spec.get("hosts", ())),
        selector=selector,
        releases=tuple(
            GroupRelease(
                name=r["name"],
                version=r["version"],
                config=_config(r["config"]) if "config" in r else None,
                distribution=DistributionSpec.from_json(r["distribution"])
                if "distribution" in r
                else None,
            )
            for r in spec["releases"]
        ),
        rollout=_rollout(spec.get("rollout", {})),
        suspend=bool(spec.get("suspend", False)),
        allow_empty=bool(spec.get("allow_empty", False)),
        recipients=MappingProxyType(dict(spec.get("recipients", {}))),
    )


def group_to_document(spec: GroupSpec) -> dict[str, Any]:
    # `hosts` stays even when empty: with no selector, the schema needs it. A present GroupRelease
    # config stays even when empty: `config: {}` and no config are different specs.
    body: dict[str, Any] = {
        "hosts": list(spec.hosts),
        "releases": [
            {"name": r.name, "version": r.version}
            | ({"config": _config_doc(r.config)} if r.config is not None else {})
            | ({"distribution": r.distribution.to_json()} if r.distribution is not None else {})
            for r in spec.releases
        ],
    }
    if rollout := _rollout_doc(spec.rollout):
        body["rollout"] = rollout
    if spec.suspend:
        body["suspend"] = True
    if spec.allow_empty:
        body["allow_empty"] = True
    if spec.recipients:
        body["recipients"] = dict(sorted(spec.recipients.items()))
    if spec.selector is not None:
        # `labels` stays even when empty: the schema refuses an empty selector mapping.
        selector: dict[str, Any] = {"labels": dict(spec.selector.labels)}
        if spec.selector.expressions:
            selector["expressions"] = [
                {"key": e.key, "operator": e.operator.value}
                | ({"values": list(e.values)} if e.values else {})
                for e in spec.selector.expressions
            ]
        body["selector"] = selector
    return {
        "apiVersion": API_VERSION,
        "kind": "Group",
        "metadata": {"name": spec.name},
        "spec": body,
    }


def _rollout(raw: Mapping[str, Any]) -> RolloutSpec:
    defaults = RolloutSpec()
    return RolloutSpec(
        max_unavailable=raw.get("max_unavailable", defaults.max_unavailable),
        canary=raw.get("canary", defaults.canary),
        pause_after_canary=bool(raw.get("pause_after_canary", defaults.pause_after_canary)),
        progress_deadline=_dur(raw.get("progress_deadline"), defaults.progress_deadline),
    )


def _rollout_doc(spec: RolloutSpec) -> dict[str, Any]:
    """Sparse: a field at its default is left out, so a body that keeps the new ones at their
    defaults stays readable by agents older than 0.2.0."""
    defaults = RolloutSpec()
    deadline, default_deadline = _durs(spec.progress_deadline, defaults.progress_deadline)
    doc: dict[str, Any] = {}
    if spec.max_unavailable != defaults.max_unavailable:
        doc["max_unavailable"] = spec.max_unavailable
    if spec.canary != defaults.canary:
        doc["canary"] = spec.canary
    if spec.pause_after_canary:
        doc["pause_after_canary"] = True
    if deadline != default_deadline:
        doc["progress_deadline"] = deadline
    return doc


def _dur(text: str | None, default: float) -> float:
    return default if text is None else parse_duration(text)
