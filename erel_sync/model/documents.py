"""Documents <-> specs: build frozen specs from schema-valid documents, and back.

Pure. `release_from_document`/`group_from_document` are called by `model.validate` after the JSON
Schema passed; `*_to_document` produce the normalised form (defaults filled in, durations in
canonical text, keys sorted by serialisation) that makes up a snapshot body. Round trip holds:
`from_document(to_document(spec)) == spec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from erel_sync.model.names import format_duration, parse_duration
from erel_sync.model.specs import (
    Artifact,
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


def _config(raw: Mapping[str, Any] | None) -> ReleaseConfig:
    raw = raw or {}
    return ReleaseConfig(
        sys_config=freeze(raw.get("sys_config", {})),
        vm_args=MappingProxyType(dict(raw.get("vm_args", {}))),
    )


def _config_doc(config: ReleaseConfig) -> dict[str, Any]:
    return {"sys_config": thaw(config.sys_config), "vm_args": dict(config.vm_args)}


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
    )


def release_to_document(spec: ReleaseSpec) -> dict[str, Any]:
    versions: list[dict[str, Any]] = []
    for v in spec.versions:
        artifact: dict[str, Any] = {"url": v.artifact.url, "sha256": v.artifact.sha256}
        if v.artifact.size is not None:
            artifact["size"] = v.artifact.size
        versions.append({"version": v.version, "artifact": artifact})
    return {
        "apiVersion": API_VERSION,
        "kind": "Release",
        "metadata": {"name": spec.name},
        "spec": {
            "versions": versions,
            "upgrade": spec.upgrade.value,
            "health": {
                "rpc": spec.health.rpc,
                "timeout": format_duration(spec.health.timeout),
                "probation": format_duration(spec.health.probation),
                "start_timeout": format_duration(spec.health.start_timeout),
            },
            "stop_timeout": format_duration(spec.stop_timeout),
            "config": _config_doc(spec.config),
        },
    }


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
            )
            for r in spec["releases"]
        ),
        rollout=RolloutSpec(
            max_unavailable=spec.get("rollout", {}).get("max_unavailable", 1),
        ),
        suspend=bool(spec.get("suspend", False)),
        allow_empty=bool(spec.get("allow_empty", False)),
    )


def group_to_document(spec: GroupSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hosts": list(spec.hosts),
        "releases": [
            {"name": r.name, "version": r.version}
            | ({"config": _config_doc(r.config)} if r.config is not None else {})
            for r in spec.releases
        ],
        "rollout": {"max_unavailable": spec.rollout.max_unavailable},
        "suspend": spec.suspend,
        "allow_empty": spec.allow_empty,
    }
    if spec.selector is not None:
        body["selector"] = {
            "labels": dict(spec.selector.labels),
            "expressions": [
                {"key": e.key, "operator": e.operator.value}
                | ({"values": list(e.values)} if e.values else {})
                for e in spec.selector.expressions
            ],
        }
    return {
        "apiVersion": API_VERSION,
        "kind": "Group",
        "metadata": {"name": spec.name},
        "spec": body,
    }


def _dur(text: str | None, default: float) -> float:
    return default if text is None else parse_duration(text)
