"""Resuming on another number of ranks keeps the checkpoint's global batch, or refuses in one line."""
from pathlib import Path

import pytest

from engine.training.checkpoints import CheckpointError
from engine.training.config import BatchSection
from engine.training.elastic import batch_for_world_size, needs_universal

SAVED = {"derived": {"world_size": 2}, "config": {"batch": {"micro": 4, "grad_accum": 1}}}  # global batch 8
WHERE = Path("ckpt/step_00000004")


@pytest.mark.parametrize("ranks, grad_accum", [(1, 2), (2, 1)])
def test_accumulation_is_recomputed_so_the_global_batch_stays(ranks, grad_accum):
    batch, line = batch_for_world_size(BatchSection(micro=4, grad_accum=1), SAVED, ranks, WHERE)
    assert batch.micro * batch.grad_accum * ranks == 8 and batch.grad_accum == grad_accum
    assert (line is None) == (ranks == 2)
    if line:
        assert line == "world size 2 -> 1: grad_accum 1 -> 2 (micro 4) keeps the global batch of 8"


def test_a_micro_batch_that_does_not_divide_the_global_batch_is_refused_naming_the_ones_that_do():
    with pytest.raises(CheckpointError) as exc:
        batch_for_world_size(BatchSection(micro=3, grad_accum=1), SAVED, 1, WHERE)
    message = str(exc.value)
    assert "\n" not in message and str(WHERE) in message
    assert "global batch 8 (micro 4 × grad_accum 1 × 2 ranks) cannot be kept on 1 ranks with micro 3" in message
    assert "--batch.micro=M with M one of [1, 2, 4, 8]" in message


def test_a_global_batch_that_the_ranks_cannot_share_is_refused():
    with pytest.raises(CheckpointError, match="8 sequences cannot be split over 3 ranks"):
        batch_for_world_size(BatchSection(micro=1, grad_accum=1), SAVED, 3, WHERE)


def test_only_a_zero_partitioned_run_on_another_world_size_needs_a_universal_checkpoint():
    assert needs_universal(SAVED, 1, 1) and needs_universal(SAVED, 4, 3)
    assert not needs_universal(SAVED, 2, 3) and not needs_universal(SAVED, 1, 0)
