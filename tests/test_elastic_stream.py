"""World-size-independent data: the rows and masks of global step s do not depend on the number of
ranks, and a stream resumed on another number of ranks continues the uninterrupted run exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.curriculum.masking import IGNORE_INDEX, MaskingSpec, make_masking_vocab, mask_batch, row_keys
from engine.curriculum.sampler import GlobalOrder, step_slice
from engine.curriculum.schedule import CurriculumConfig, resolve_curriculum
from engine.curriculum.stream import TrainingStream
from engine.benchmarks.synthetic import BERT_SPECIAL_IDS, SyntheticShards

SHARDS = SyntheticShards(96, 128, seed=4)  # one epoch = STEPS × GLOBAL_BATCH rows
GLOBAL_BATCH = 8
MICRO = 2
STEPS = 12  # bioptimus preset: four phases of three steps


def layout(world_size: int):
    grad_accum = GLOBAL_BATCH // (MICRO * world_size)
    curriculum = resolve_curriculum(CurriculumConfig(preset="bioptimus"), total_steps=STEPS, default_seq_len=128,
                                    default_micro_batch_size=MICRO, grad_accum=grad_accum, world_size=world_size)
    return curriculum, grad_accum


def open_streams(world_size: int, state: dict | None = None) -> list[TrainingStream]:
    curriculum, grad_accum = layout(world_size)
    streams = [TrainingStream({128: SHARDS}, curriculum, seed=3, rank=r, world_size=world_size,
                              grad_accum=grad_accum, prefetch=0) for r in range(world_size)]
    if state is not None:
        for stream in streams:
            stream.load_state_dict(json.loads(json.dumps(state)))
    return streams


def global_steps(streams: list[TrainingStream], steps: int) -> list[dict[str, torch.Tensor]]:
    """Each step's micro-batches of every rank, put back in global position order."""
    out = []
    for _ in range(steps):
        pieces = {}
        for rank, stream in enumerate(streams):
            for _ in range(stream.grad_accum):
                item = stream.next_micro_batch()
                offset, _ = step_slice(stream.world_size, rank, item.micro_step, MICRO)
                pieces[offset] = item.batch
        ordered = [pieces[k] for k in sorted(pieces)]
        out.append({name: torch.cat([getattr(b, name) for b in ordered]) for name in ("input_ids", "labels")})
    return out


def same_steps(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.fixture(scope="module")
def uninterrupted():
    return global_steps(open_streams(2), STEPS)


@pytest.mark.parametrize("world_size", [1, 4])
def test_each_step_reads_and_masks_the_same_rows_on_any_number_of_ranks(uninterrupted, world_size):
    assert same_steps(global_steps(open_streams(world_size), STEPS), uninterrupted)


@pytest.mark.parametrize("before, after, stop", [
    (2, 1, 4),  # 2 -> 1 ranks mid-epoch, inside phase 2 (whole-word 15 %)
    (1, 2, 7),  # 1 -> 2 ranks inside phase 3 (whole-word 20 %)
    (2, 4, 1),  # 2 -> 4 ranks inside phase 1
])
def test_resume_on_another_number_of_ranks_continues_the_uninterrupted_run(uninterrupted, before, after, stop):
    first = open_streams(before)
    served = global_steps(first, stop)
    state = first[0].state_dict()
    assert all(s.state_dict() == state for s in first)
    served += global_steps(open_streams(after, state), STEPS - stop)
    assert same_steps(served, uninterrupted)
    row_ids = served_row_ids(served)
    assert sorted(row_ids) == list(range(len(SHARDS)))  # exactly one pass over the rows...
    assert row_ids == GlobalOrder(3, 128, len(SHARDS)).rows(0, len(SHARDS)).tolist()  # ...in the run's order


def served_row_ids(steps: list[dict]) -> list[int]:
    """Shard row ids of the served rows, in order, recovered from their unmasked tokens."""
    lookup = {SHARDS.get_batch(np.array([r])).ids.astype(np.int64).tobytes(): r for r in range(len(SHARDS))}
    ids = []
    for step in steps:
        originals = torch.where(step["labels"] != IGNORE_INDEX, step["labels"], step["input_ids"])
        ids += [lookup[row.numpy().tobytes()] for row in originals]
    return ids


def test_a_rows_mask_depends_on_its_key_not_on_the_rest_of_the_batch():
    vocab = make_masking_vocab(SHARDS.vocab_size, BERT_SPECIAL_IDS)
    rows = SHARDS.get_batch(np.arange(6))
    keys = row_keys(3, 1, np.arange(100, 106))
    spec = MaskingSpec(unit="word", rate=0.2)
    whole = mask_batch(rows, spec, keys, vocab)
    tail = mask_batch(SHARDS.get_batch(np.arange(3, 6)), spec, keys[3:], vocab)
    assert torch.equal(whole.input_ids[3:], tail.input_ids) and torch.equal(whole.labels[3:], tail.labels)
    other = mask_batch(rows, spec, row_keys(3, 1, np.arange(200, 206)), vocab)
    assert not torch.equal(whole.labels, other.labels)


def test_row_keys_differ_by_seed_phase_and_position():
    keys = {int(row_keys(seed, phase, [pos])[0]) for seed in (1, 2) for phase in (0, 1) for pos in (0, 1, 2)}
    assert len(keys) == 12
    assert torch.equal(row_keys(5, 2, np.arange(4)), row_keys(5, 2, np.arange(4)))
