"""core.facts: what one erl_call answer says about a release node, on canned erl_call output.

Every stdout below was printed by a real erl_call (OTP 25) against a node running erel; the
"old erel" ones by a node whose erel_rpc predates `observe`.
"""

from __future__ import annotations

import pytest

from erel_sync.core import facts, reasons
from erel_sync.core.erlterm import Atom
from erel_sync.core.facts import HealthAnswer, NodeAnswer
from erel_sync.core.observed import ObservedRelease
from erel_sync.core.rpccodec import RpcOutcome, RpcStatus, decode_erl_call

# erel_rpc observe [] with the health check erlang:node/0 (returns the node name, not ok).
OBSERVE_UNHEALTHY = (
    '"erel1:eyJvayI6dHJ1ZSwidmFsdWUiOnsic3RhdHVzIjp7InJlbGVhc2UiOiJFcmxhbmcvT1RQIiwiY3VycmVudCI6'
    "IjI1IiwicGVybWFuZW50IjoiMjUiLCJ2ZXJzaW9ucyI6W3sidmVyc2lvbiI6IjI1Iiwic3RhdHVzIjoicGVybWFuZW50"
    "In1dLCJhcHBsaWNhdGlvbnMiOlt7Im5hbWUiOiJrZXJuZWwiLCJ2ZXJzaW9uIjoiOC41LjMifSx7Im5hbWUiOiJzYXNs"
    "IiwidmVyc2lvbiI6IjQuMiJ9LHsibmFtZSI6InN0ZGxpYiIsInZlcnNpb24iOiI0LjIifV0sInVwdGltZV9tcyI6MjA2"
    "NywibWVtb3J5X2J5dGVzIjoxNTQ5NTIzMiwicHJvY2Vzc2VzIjo1MSwib3RwX3JlbGVhc2UiOiIyNSIsIm5vZGUiOiJl"
    "cmVsY2FubmVkQHZtIn0sImhlYWx0aCI6eyJoZWFsdGh5IjpmYWxzZSwicmVhc29uIjoiZXJsYW5nOm5vZGUoKSByZXR1"
    'cm5lZCBlcmVsY2FubmVkQHZtIn19fQ=="'
)
# erel_rpc observe [erel, apps_running]
OBSERVE_HEALTHY = (
    '"erel1:eyJvayI6dHJ1ZSwidmFsdWUiOnsic3RhdHVzIjp7InJlbGVhc2UiOiJFcmxhbmcvT1RQIiwiY3VycmVudCI6'
    "IjI1IiwicGVybWFuZW50IjoiMjUiLCJ2ZXJzaW9ucyI6W3sidmVyc2lvbiI6IjI1Iiwic3RhdHVzIjoicGVybWFuZW50"
    "In1dLCJhcHBsaWNhdGlvbnMiOlt7Im5hbWUiOiJrZXJuZWwiLCJ2ZXJzaW9uIjoiOC41LjMifSx7Im5hbWUiOiJzYXNs"
    "IiwidmVyc2lvbiI6IjQuMiJ9LHsibmFtZSI6InN0ZGxpYiIsInZlcnNpb24iOiI0LjIifV0sInVwdGltZV9tcyI6MjEw"
    "MiwibWVtb3J5X2J5dGVzIjoxNTg0MDQwMCwicHJvY2Vzc2VzIjo1MSwib3RwX3JlbGVhc2UiOiIyNSIsIm5vZGUiOiJl"
    'cmVsY2FubmVkQHZtIn0sImhlYWx0aCI6eyJoZWFsdGh5Ijp0cnVlfX19"'
)
# erel_rpc status []
STATUS = (
    '"erel1:eyJvayI6dHJ1ZSwidmFsdWUiOnsicmVsZWFzZSI6IkVybGFuZy9PVFAiLCJjdXJyZW50IjoiMjUiLCJwZXJt'
    "YW5lbnQiOiIyNSIsInZlcnNpb25zIjpbeyJ2ZXJzaW9uIjoiMjUiLCJzdGF0dXMiOiJwZXJtYW5lbnQifV0sImFwcGxp"
    "Y2F0aW9ucyI6W3sibmFtZSI6Imtlcm5lbCIsInZlcnNpb24iOiI4LjUuMyJ9LHsibmFtZSI6InNhc2wiLCJ2ZXJzaW9u"
    "IjoiNC4yIn0seyJuYW1lIjoic3RkbGliIiwidmVyc2lvbiI6IjQuMiJ9XSwidXB0aW1lX21zIjoyMDgyLCJtZW1vcnlf"
    'Ynl0ZXMiOjE1ODE0NzEyLCJwcm9jZXNzZXMiOjUxLCJvdHBfcmVsZWFzZSI6IjI1Iiwibm9kZSI6ImVyZWxjYW5uZWRAdm0ifX0="'
)
HEALTHY = '"erel1:eyJvayI6dHJ1ZSwidmFsdWUiOnsiaGVhbHRoeSI6dHJ1ZX19"'
BOOTING = (
    '"erel1:eyJvayI6ZmFsc2UsImVycm9yIjoidGhlIG5vZGUgaXMgc3RpbGwgYm9vdGluZyAocmVsZWFzZV9oYW5kbGVy'
    'IG5vdCBzdGFydGVkIHlldCkifQ=="'
)
OLD_EREL = "{badrpc, {'EXIT', {undef, [{erel_rpc, observe, [], []}]}}}"
OLD_EREL_CHECK = "{badrpc, {'EXIT', {undef, [{erel_rpc, observe, [hello_health, check], []}]}}}"
OTHER_UNDEF = "{badrpc, {'EXIT', {undef, [{erel_rpc, nosuch, [], []}]}}}"
DOWN = "erl_call: failed to connect to node erelnosuchnode@vm\n"


def answer(stdout: str, code: int = 0, stderr: str = "") -> RpcOutcome:
    return decode_erl_call(code, stdout, stderr, envelope=True)


def test_observe_answers_status_and_health_in_one_envelope() -> None:
    got = facts.parse_observe(answer(OBSERVE_HEALTHY))
    assert got.status is not None
    assert (got.status["current"], got.status["permanent"]) == ("25", "25")
    assert got.status["node"] == "erelcanned@vm"
    assert got.health == HealthAnswer(True, "")

    bad = facts.parse_observe(answer(OBSERVE_UNHEALTHY))
    assert bad.status is not None and bad.status["processes"] == 51
    assert bad.health == HealthAnswer(False, "erlang:node() returned erelcanned@vm")


@pytest.mark.parametrize(
    ("stdout", "code", "stderr", "status"),
    [
        (BOOTING, 0, "", RpcStatus.ERROR),
        (OLD_EREL, 0, "", RpcStatus.BADRPC),
        ("", 1, DOWN, RpcStatus.UNREACHABLE),
        ("Segmentation fault", 0, "", RpcStatus.GARBAGE),
        ('"erel1:!!!"', 0, "", RpcStatus.GARBAGE),
    ],
    ids=["booting", "badrpc", "unreachable", "garbage", "bad-base64"],
)
def test_an_unanswered_observe_has_neither_status_nor_health(
    stdout: str, code: int, stderr: str, status: RpcStatus
) -> None:
    got = facts.parse_observe(answer(stdout, code, stderr))
    assert (got.status, got.health) == (None, None)
    assert got.outcome.status is status


def test_an_ok_envelope_without_a_status_is_garbage() -> None:
    got = facts.parse_observe(RpcOutcome(RpcStatus.OK, value={"health": {"healthy": True}}))
    assert got.status is None and got.outcome.status is RpcStatus.GARBAGE
    no_health = facts.parse_observe(RpcOutcome(RpcStatus.OK, value={"status": {"current": "1"}}))
    assert no_health.health == HealthAnswer(False, "health check gave no answer")


def test_an_old_erel_is_recognised_by_its_undef_answer() -> None:
    assert facts.lacks_observe(answer(OLD_EREL))
    assert facts.lacks_observe(answer(OLD_EREL_CHECK))
    for other in (answer(OTHER_UNDEF), answer(BOOTING), answer("", 1, DOWN), answer(STATUS)):
        assert not facts.lacks_observe(other)


def test_status_and_health_parsers() -> None:
    status = facts.parse_status(answer(STATUS))
    assert status is not None and status["versions"] == [{"version": "25", "status": "permanent"}]
    assert facts.parse_status(answer(BOOTING)) is None
    assert facts.parse_status(answer("", 1, DOWN)) is None
    assert facts.parse_health(answer(HEALTHY)) == HealthAnswer(True)
    down = facts.parse_health(answer("", 1, DOWN))
    assert not down.healthy and not down.reachable and down.reason.startswith("node unreachable")
    assert facts.parse_health(answer(BOOTING)) == HealthAnswer(
        False, "the node is still booting (release_handler not started yet)"
    )
    assert facts.parse_health(answer("garbage")) == HealthAnswer(False, "not an erel1 envelope")


def test_health_args_select_erel_s_own_checks_or_one_check() -> None:
    assert facts.health_args("erel:health/0") == ()
    assert facts.health_args("erel_rpc:health/0") == ()
    assert facts.health_args("hello_health:check/0") == (Atom("hello_health"), Atom("check"))


def observed(
    answer_: NodeAnswer, *, health: bool, alive: bool = False, pending: bool = False
) -> ObservedRelease:
    return facts.observed_release(
        "hello",
        node="hello_h@vm",
        pending={"op": "upgrade"} if pending else None,
        answer=answer_,
        health_asked=health,
        alive=alive,
        permanent="0.1.0",
    )


def test_a_node_that_answers_is_running_with_its_versions_and_health() -> None:
    obs = observed(facts.parse_observe(answer(OBSERVE_HEALTHY)), health=True)
    assert (obs.installed, obs.running, obs.reachable, obs.managed) == (True, True, True, True)
    assert (obs.current, obs.permanent, obs.version) == ("25", "25", "25")
    assert obs.versions == (("25", "permanent"),)
    assert (obs.healthy, obs.reason, obs.node) == (True, reasons.Healthy, "hello_h@vm")
    assert obs.details == {"uptime_ms": 2102, "memory_bytes": 15840400, "processes": 51}

    sick = observed(facts.parse_observe(answer(OBSERVE_UNHEALTHY)), health=True)
    assert (sick.healthy, sick.reason) == (False, reasons.Unhealthy)
    assert sick.message == "erlang:node() returned erelcanned@vm"

    plain = observed(NodeAnswer(answer(STATUS), facts.parse_status(answer(STATUS))), health=False)
    assert (plain.healthy, plain.reason) == (None, reasons.Running)

    pending = observed(facts.parse_observe(answer(OBSERVE_HEALTHY)), health=True, pending=True)
    assert pending.reason == reasons.UpgradePending and pending.healthy is True


def test_a_node_that_does_not_answer_is_judged_by_its_processes() -> None:
    down = facts.parse_observe(answer("", 1, DOWN))
    stopped = observed(down, health=True)
    assert (stopped.running, stopped.reason, stopped.permanent) == (False, reasons.Stopped, "0.1.0")
    assert stopped.healthy is None and stopped.version == "0.1.0" and stopped.managed

    hung = observed(down, health=True, alive=True)
    assert (hung.running, hung.reachable, hung.healthy) == (True, False, False)
    assert hung.reason == reasons.NodeUnreachable and "failed to connect" in hung.message
    assert observed(down, health=False, alive=True).healthy is None

    booting = observed(facts.parse_observe(answer(BOOTING)), health=True, alive=True)
    assert booting.reason == reasons.RpcFailed and "still booting" in booting.message


def test_unmanaged_and_absent_roots() -> None:
    theirs = facts.unmanaged("hello", exists=True)
    assert theirs.installed and not theirs.managed and theirs.reason == reasons.NotManaged
    absent = facts.unmanaged("hello", exists=False)
    assert not absent.installed and not absent.managed and absent.reason == reasons.NotInstalled
