"""The trainer's stream: curriculum order, per-phase shapes, exact resume, prefetch, two ranks."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from engine.config import ConfigError
from engine.curriculum.masking import IGNORE_INDEX
from engine.curriculum.sampler import epoch_permutation
from engine.curriculum.schedule import CurriculumConfig, PhaseConfig, preset, resolve_curriculum
from engine.curriculum.stream import TrainingStream
from engine.benchmarks.synthetic import SyntheticShards

SHARDS = {128: SyntheticShards(300, 128, seed=1), 512: SyntheticShards(60, 512, seed=2)}


def _bioptimus(total_steps=12, micro=4):
    return resolve_curriculum(CurriculumConfig(preset="bioptimus"), total_steps=total_steps, default_seq_len=128,
                              default_micro_batch_size=micro)


def _stream(curriculum=None, **kwargs):
    options = dict(seed=17, rank=0, world_size=1, grad_accum=2, prefetch=2)
    options.update(kwargs)
    return TrainingStream({128: SHARDS[128]}, curriculum or _bioptimus(), **options)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.batch, b.batch)) and (a.step, a.micro_step) == (b.step, b.micro_step)


def _originals(item) -> torch.Tensor:
    return torch.where(item.batch.labels != IGNORE_INDEX, item.batch.labels, item.batch.input_ids)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_inside_phase_three_reproduces_batches_and_masks_bit_for_bit(prefetch):
    with _stream(prefetch=prefetch) as straight:
        uninterrupted = list(straight)
    with _stream(prefetch=prefetch) as first:
        for _ in range(2 * 7 + 1):  # step 7 (phase 3 of 4 over 12 steps), one micro-step in
            item = first.next_micro_batch()
        assert item.phase.name == "wwm-20"
        state = json.loads(json.dumps(first.state_dict()))
    with _stream(prefetch=prefetch) as resumed:
        resumed.load_state_dict(state)
        rest = list(resumed)
    assert len(rest) == len(uninterrupted) - 15
    assert all(_same(a, b) for a, b in zip(rest, uninterrupted[15:]))


def test_prefetch_and_inline_production_give_identical_streams():
    with _stream(prefetch=0) as inline, _stream(prefetch=4) as threaded:
        assert all(_same(a, b) for a, b in zip(inline, threaded))


def test_state_dict_counts_consumed_batches_not_prefetched_ones():
    with _stream(prefetch=6) as stream:
        stream.next_micro_batch()
        deadline = time.time() + 10
        while not stream._queue.full() and time.time() < deadline:
            time.sleep(0.01)
        assert stream._queue.full()
        state = stream.state_dict()
    assert (state["step"], state["micro_step"], state["sampler"]["consumed"]["128"]) == (0, 1, 0)


def test_phase_changes_are_reported_once_at_the_configured_steps():
    with _stream() as stream:
        items = list(stream)
    assert [(i.step, i.phase.name) for i in items if i.phase.changed] == [
        (0, "token-15"), (3, "wwm-15"), (6, "wwm-20"), (9, "wwm-20-no-corruption")]
    assert all(i.phase.index == _bioptimus().phase_at(i.step).index for i in items)


def test_a_resumed_stream_reports_its_current_phase_again():
    with _stream() as first:
        for _ in range(8):
            first.next_micro_batch()
        state = first.state_dict()
    with _stream() as resumed:
        resumed.load_state_dict(state)
        item = resumed.next_micro_batch()
    assert item.phase.changed and item.phase.name == "wwm-15"


def test_each_phase_masks_with_its_own_unit_rate_and_corruption():
    with _stream(curriculum=_bioptimus(total_steps=40, micro=16)) as stream:
        items = list(stream)
    for index, rate in enumerate((0.15, 0.15, 0.20, 0.20)):
        chosen = torch.cat([(i.batch.labels != IGNORE_INDEX).flatten() for i in items if i.phase.index == index])
        maskable = torch.cat([(_originals(i) > 103).flatten() for i in items if i.phase.index == index])
        assert abs(chosen.sum().item() / maskable.sum().item() - rate) < 0.005
    last = [i for i in items if i.phase.index == 3]
    assert all(torch.all(i.batch.input_ids[i.batch.labels != IGNORE_INDEX] == 103) for i in last)


def test_phases_serve_their_own_sequence_length_and_micro_batch_size():
    curriculum = resolve_curriculum(
        CurriculumConfig(preset=None, phases=[PhaseConfig(name="short", steps=3, seq_len=128, micro_batch_size=8),
                                              PhaseConfig(name="long", steps=2, seq_len=512, micro_batch_size=2)]),
        total_steps=5, default_seq_len=128, default_micro_batch_size=8)
    with TrainingStream(SHARDS, curriculum, seed=1, grad_accum=1) as stream:
        shapes = [tuple(i.batch.input_ids.shape) for i in stream]
    assert shapes == [(8, 128)] * 3 + [(2, 512)] * 2


def test_two_ranks_read_disjoint_rows_and_cover_the_epoch_once():
    shards = SyntheticShards(64, 128, seed=5)
    lookup = {bytes(shards.get_batch(np.array([r])).ids.astype(np.int64).tobytes()): r for r in range(64)}
    curriculum = resolve_curriculum(CurriculumConfig(preset="flat"), total_steps=4, default_seq_len=128,
                                    default_micro_batch_size=4)
    served = []
    for rank in range(2):
        with TrainingStream({128: shards}, curriculum, seed=3, rank=rank, world_size=2, grad_accum=2) as stream:
            for item in stream:
                served += [lookup[bytes(row.numpy().tobytes())] for row in _originals(item)]
    assert sorted(served) == list(range(64))


def test_ranks_draw_different_masks():
    with _stream(rank=0, world_size=2) as a, _stream(rank=1, world_size=2) as b:
        x, y = a.next_micro_batch(), b.next_micro_batch()
    assert not torch.equal(x.batch.labels != IGNORE_INDEX, y.batch.labels != IGNORE_INDEX)


def test_the_stream_ends_after_the_last_step():
    with _stream() as stream:
        items = list(stream)
        assert len(items) == 12 * 2 and stream.step == 12
        with pytest.raises(StopIteration):
            stream.next_micro_batch()


def test_an_error_while_loading_reaches_the_trainer():
    class Broken(SyntheticShards):
        def get_batch(self, indices):
            raise OSError("disk gone")

    with TrainingStream({128: Broken(20, 128)}, _bioptimus(), seed=1, prefetch=2) as stream:
        with pytest.raises(OSError, match="disk gone"):
            stream.next_micro_batch()


@pytest.mark.parametrize("change, message", [
    (lambda s: s["sampler"].update(seed=99), "seed"),
    (lambda s: s.update(num_rows={"128": 5}), "num_rows"),
    (lambda s: s.update(manifest_hash={"128": "other"}), "manifest_hash"),
    (lambda s: s.update(version=0), "version"),
])
def test_resuming_from_a_state_of_other_data_is_rejected(change, message):
    with _stream() as stream:
        stream.next_micro_batch()
        stream.next_micro_batch()
        state = stream.state_dict()
    change(state)
    with _stream() as other, pytest.raises(ValueError, match=message):
        other.load_state_dict(state)


def test_a_curriculum_needing_missing_shards_is_rejected_naming_the_phase():
    with pytest.raises(ConfigError, match="seq-512"):
        TrainingStream({128: SHARDS[128]}, preset("seqlen-warmup", total_steps=10), seed=0)


def test_resuming_on_more_ranks_at_a_step_boundary_continues_the_global_order():
    shards = SyntheticShards(96, 128, seed=7)
    lookup = {bytes(shards.get_batch(np.array([r])).ids.astype(np.int64).tobytes()): r for r in range(96)}
    curriculum = resolve_curriculum(CurriculumConfig(preset="flat"), total_steps=5, default_seq_len=128,
                                    default_micro_batch_size=4)
    served = []
    with TrainingStream({128: shards}, curriculum, seed=3, rank=0, world_size=1, grad_accum=2) as solo:
        for _ in range(2 * 3):  # three steps of 8 rows on one rank
            served += [lookup[bytes(row.numpy().tobytes())] for row in _originals(solo.next_micro_batch())]
        state = solo.state_dict()
    for rank in range(3):
        with TrainingStream({128: shards}, curriculum, seed=3, rank=rank, world_size=3, grad_accum=2) as stream:
            stream.load_state_dict(state)
            for item in stream:  # two steps of 24 rows on three ranks
                served += [lookup[bytes(row.numpy().tobytes())] for row in _originals(item)]
    assert len(served) == 72 and set(served) == set(epoch_permutation(3, 128, 0, 96)[:72].tolist())


def test_resuming_mid_step_on_another_world_size_is_rejected():
    with _stream(world_size=2) as stream:
        stream.next_micro_batch()
        state = stream.state_dict()
    with _stream(world_size=4) as other, pytest.raises(ValueError, match="inside an optimizer step"):
        other.load_state_dict(state)
