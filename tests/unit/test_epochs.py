"""The seq rule of publishers that take turns (core.epochs)."""

from __future__ import annotations

import pytest

from erel_sync.core.epochs import EPOCH_SPAN, EpochExhausted, epoch_of, next_seq


def test_an_epoch_starts_above_every_seq_of_the_ones_before() -> None:
    assert next_seq(57, 3) == 3 * EPOCH_SPAN + 1  # seqs from before --ha are epoch 0
    assert next_seq(3 * EPOCH_SPAN + 1, 3) == 3 * EPOCH_SPAN + 2
    assert next_seq(2 * EPOCH_SPAN + 999, 7) == 7 * EPOCH_SPAN + 1
    assert epoch_of(next_seq(0, 1)) == 1


def test_two_epochs_never_sign_the_same_seq() -> None:
    old, new = 4, 5
    signed_old = {next_seq(old * EPOCH_SPAN + k, old) for k in range(1, 200)}
    signed_new = {next_seq(new * EPOCH_SPAN + k, new) for k in range(0, 200)}
    assert not signed_old & signed_new
    assert max(signed_old) < min(signed_new)


def test_a_later_epochs_seq_stops_an_older_publisher() -> None:
    with pytest.raises(ValueError, match="belongs to epoch 5"):
        next_seq(5 * EPOCH_SPAN + 1, 4)


def test_an_epoch_ends() -> None:
    with pytest.raises(EpochExhausted):
        next_seq(2 * EPOCH_SPAN - 1, 1)
