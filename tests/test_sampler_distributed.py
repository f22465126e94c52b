"""Global-order sampler: every row once per epoch across ranks, resumable on any world size."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.curriculum.sampler import DistributedSampler, GlobalOrder, epoch_permutation


def _serve_steps(samplers, steps, seq_len=128, micro=4, grad_accum=3):
    """Rows served, in global-position order, by all ranks over `steps` optimizer steps."""
    served = []
    for _ in range(steps):
        block = {}
        for sampler in samplers:
            for m in range(grad_accum):
                offset = (m * sampler.world_size + sampler.rank) * micro
                block[offset] = sampler.micro_batch_rows(seq_len, micro, m)
        served.extend(np.concatenate([block[k] for k in sorted(block)]))
        for sampler in samplers:
            sampler.advance_step(seq_len, micro, grad_accum)
    return np.array(served)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_row_is_served_exactly_once_per_epoch_across_ranks(world_size):
    num_rows = 4 * 3 * world_size * 5  # an epoch is exactly five steps
    samplers = [DistributedSampler({128: num_rows}, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    served = _serve_steps(samplers, steps=5)
    assert sorted(served.tolist()) == list(range(num_rows))


def test_ranks_never_share_a_row_within_a_step():
    samplers = [DistributedSampler({128: 1000}, seed=1, rank=r, world_size=4) for r in range(4)]
    rows = [np.concatenate([s.micro_batch_rows(128, 8, m) for m in range(2)]) for s in samplers]
    assert len(set(np.concatenate(rows).tolist())) == 4 * 2 * 8


def test_an_epoch_tail_is_completed_from_the_next_epoch_not_dropped():
    num_rows = 100  # 24 positions per step do not divide 100
    samplers = [DistributedSampler({128: num_rows}, seed=3, rank=r, world_size=2) for r in range(2)]
    served = _serve_steps(samplers, steps=25, micro=4, grad_accum=3)  # 600 positions = 6 epochs
    for epoch in range(6):
        assert sorted(served[epoch * num_rows:(epoch + 1) * num_rows].tolist()) == list(range(num_rows))
    assert not np.array_equal(served[:num_rows], served[num_rows:2 * num_rows])


def test_global_order_is_a_pure_function_of_seed_seq_len_and_epoch():
    assert np.array_equal(epoch_permutation(5, 128, 2, 50), epoch_permutation(5, 128, 2, 50))
    assert not np.array_equal(epoch_permutation(5, 128, 2, 50), epoch_permutation(6, 128, 2, 50))
    assert not np.array_equal(epoch_permutation(5, 128, 2, 50), epoch_permutation(5, 512, 2, 50))
    order = GlobalOrder(seed=5, seq_len=128, num_rows=50)
    assert np.array_equal(order.rows(95, 10), np.concatenate([epoch_permutation(5, 128, 1, 50)[45:],
                                                              epoch_permutation(5, 128, 2, 50)[:5]]))


@pytest.mark.parametrize("num_rows", [1, 2, 3, 17, 1000, 4097])
def test_each_epoch_order_is_a_permutation_of_the_rows(num_rows):
    assert sorted(epoch_permutation(11, 128, 0, num_rows).tolist()) == list(range(num_rows))


def test_epoch_orders_look_random_and_independent_of_each_other():
    first, second = epoch_permutation(1, 128, 0, 200_000), epoch_permutation(1, 128, 1, 200_000)
    positions = np.arange(200_000)
    assert abs(np.corrcoef(positions, first)[0, 1]) < 0.01  # ~0.002 for a random order
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01
    assert (first == positions).sum() < 10
    assert abs(np.mean(np.abs(np.diff(first))) / 200_000 - 1 / 3) < 0.01  # random neighbours: 1/3 apart


def test_reads_across_chunk_and_epoch_boundaries_follow_the_epoch_orders():
    num_rows = 150_000  # spans three order chunks
    order = GlobalOrder(seed=4, seq_len=128, num_rows=num_rows)
    stream = np.concatenate([epoch_permutation(4, 128, epoch, num_rows) for epoch in range(3)])
    for start, count in [(0, 10), (65_530, 20), (131_000, 30_000), (num_rows - 5, 10), (2 * num_rows - 100, 300)]:
        assert np.array_equal(order.rows(start, count), stream[start:start + count])


def test_a_huge_shard_set_needs_no_materialised_order():
    order = GlobalOrder(seed=2, seq_len=128, num_rows=10 ** 12)
    rows = order.rows(5 * 10 ** 11, 64)
    assert len(set(rows.tolist())) == 64 and rows.min() >= 0 and rows.max() < 10 ** 12


def test_resume_from_state_dict_serves_the_same_rows_as_the_uninterrupted_run():
    straight = DistributedSampler({128: 97, 512: 31}, seed=2, rank=1, world_size=2)
    expected = []
    for step in range(6):
        seq_len = 128 if step < 4 else 512
        expected.append(straight.micro_batch_rows(seq_len, 4, 1))
        straight.advance_step(seq_len, 4, 2)
    first = DistributedSampler({128: 97, 512: 31}, seed=2, rank=1, world_size=2)
    for _ in range(3):
        first.advance_step(128, 4, 2)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = DistributedSampler({128: 97, 512: 31}, seed=2, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for step in range(3, 6):
        seq_len = 128 if step < 4 else 512
        assert np.array_equal(resumed.micro_batch_rows(seq_len, 4, 1), expected[step])
        resumed.advance_step(seq_len, 4, 2)


def test_resume_on_a_different_world_size_neither_skips_nor_repeats_rows():
    num_rows = 240
    before = [DistributedSampler({128: num_rows}, seed=9, rank=r, world_size=2) for r in range(2)]
    served = list(_serve_steps(before, steps=3, micro=4, grad_accum=3))  # 72 positions
    state = before[0].state_dict()
    after = [DistributedSampler({128: num_rows}, seed=9, rank=r, world_size=3) for r in range(3)]
    for sampler in after:
        sampler.load_state_dict(state)
    served += list(_serve_steps(after, steps=14, micro=2, grad_accum=2))  # 168 positions
    assert sorted(served) == list(range(num_rows))


def test_state_dict_is_json_and_reports_the_epoch():
    sampler = DistributedSampler({128: 10}, seed=4)
    for _ in range(3):
        sampler.advance_step(128, 4, 1)
    state = sampler.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state == {"seed": 4, "consumed": {"128": 12}, "epoch": {"128": 1}}


def test_state_for_a_seq_len_without_shards_is_rejected():
    sampler = DistributedSampler({128: 10}, seed=4)
    with pytest.raises(ValueError, match=r"seq_len \[512\]"):
        sampler.load_state_dict({"seed": 4, "consumed": {"512": 3}})


def test_rank_outside_the_world_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        DistributedSampler({128: 10}, seed=0, rank=2, world_size=2)
