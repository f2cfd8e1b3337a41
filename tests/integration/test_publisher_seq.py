"""The publisher's seq across publishers (real broker): one that starts on a new machine takes
its seq from the tail of the config stream, including a snapshot signed with its key that it
cannot load itself (a newer publisher's body, refused as AgentTooOld). Otherwise it would sign
seqs that a newer publisher already used, for other revisions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from erel_sync.core.snapshot import FORMAT, KIND_SNAPSHOT, load_private_key, signed_message
from erel_sync.model.specs import canonical_json
from erel_sync.publisher.daemon import Publisher
from tests.configrepo import GitRepo
from tests.integration.test_broker_faults import FILES, daemons, running
from tests.integration.test_join import append_to_stream
from tests.waiting import eventually


def newer_envelope(body: dict[str, object], seq: int, key: Ed25519PrivateKey) -> bytes:
    """A snapshot as a newer publisher would sign it: its body requires a newer erel-sync."""
    body = {**body, "requires": "99.0.0"}
    digest = hashlib.sha256(canonical_json(body)).hexdigest()
    revision = "a" * 40
    signature = key.sign(signed_message(seq, revision, digest))
    return canonical_json(
        {
            "format": FORMAT,
            "kind": KIND_SNAPSHOT,
            "seq": seq,
            "revision": revision,
            "created": "2026-11-27T00:00:00Z",
            "digest": digest,
            "body": body,
            "signature": base64.b64encode(signature).decode(),
            "key_id": "k1",
        }
    )


async def test_a_new_publisher_continues_above_a_tail_it_cannot_load(
    vhost: str, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, ()) as (first, _):
        await eventually(lambda: first.connected, what="the first publisher connected")
        assert first.envelope is not None and first.seq == 1
        body = json.loads(first.envelope)["body"]
        key = load_private_key((tmp_path / "k.pem").read_bytes())
    await append_to_stream(vhost, newer_envelope(body, 7, key))

    fresh = Publisher(replace(first.s, state_dir=tmp_path / "new"))  # a new machine
    async with running(fresh):
        await eventually(lambda: fresh.connected, what="the new publisher connected")
        await eventually(lambda: fresh.seq > 1, what="the head signed above the tail")
        assert repo.readers(), "the publisher keeps its repository readers while it runs"
    assert repo.readers() == [], "a stopped publisher left git processes behind"
    assert fresh.seq == 8, "a seq the newer publisher used was signed again"


async def test_a_publisher_without_ha_waits_while_another_is_active(
    vhost: str, tmp_path: Path
) -> None:
    """Every publisher takes the broker's lock: one without --ha started beside an active one
    signs nothing onto the stream (its seqs are of no epoch) until that one is gone, and
    `--once` does not publish beside it."""
    repo = GitRepo(tmp_path / "config")
    repo.commit(FILES)
    async with daemons(tmp_path, vhost, repo, ()) as (first, _):
        await eventually(lambda: first.connected, what="the first publisher connected")
        once = Publisher(replace(first.s, state_dir=tmp_path / "once"))
        assert (await once.once())[1] is False
        second = Publisher(replace(first.s, state_dir=tmp_path / "second"))
        stop = asyncio.Event()
        task = asyncio.create_task(second.run(stop))
        await eventually(second.standby.is_set, what="the second standing by")
        assert not second.connected and first.connected
    # The first one stopped with the block: the second takes its turn and publishes.
    try:
        await eventually(lambda: second.connected, within=30, what="the second active")
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 60) is None
