"""Seqs of publishers that take turns (`erel-sync publisher --ha`): which seq an active
publisher may sign next.

Pure. Each publisher that becomes active claims an epoch (publisher.lease: the offset of its
claim record in the `erel.revisions` stream, plus one: offsets only grow, and only the holder
of the broker's lock claims, so every activation gets a greater epoch than all before it). It
signs only seqs of its own epoch: `epoch * EPOCH_SPAN + n`, 0 < n < EPOCH_SPAN. Two publishers
that both believe they are active (one paused past its broker's heartbeat timeout, say) hold
different epochs, so no seq is ever signed for two revisions, and the newer one's seqs are
greater than any the older one can sign (agents ignore a seq below the one they hold).
Seqs a publisher signed before `--ha` (epoch 0) are all below the first epoch's.
"""

from __future__ import annotations

EPOCH_SPAN = 1_000_000


class EpochExhausted(Exception):
    """An epoch has no seq left: the publisher must claim a new one."""


def epoch_of(seq: int) -> int:
    return seq // EPOCH_SPAN


def next_seq(last: int, epoch: int) -> int:
    """The seq to sign after `last` (the greatest the publisher knows of, its own or the
    stream's) in `epoch`; raises EpochExhausted at the epoch's end, and ValueError when `last`
    belongs to a later epoch (a newer publisher is active: this one must not sign)."""
    if epoch_of(last) > epoch:
        raise ValueError(f"seq {last} belongs to epoch {epoch_of(last)}, after {epoch}")
    seq = max(last, epoch * EPOCH_SPAN) + 1
    if epoch_of(seq) != epoch:
        raise EpochExhausted(f"epoch {epoch} has no seq after {last}")
    return seq
