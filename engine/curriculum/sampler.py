"""Which packed rows each data-parallel rank reads: one global shuffled order, a global position.

For every sequence length the rows of its shard set form an endless global stream: epoch 0's seeded
permutation, then epoch 1's, and so on. The only state is how many positions of each stream have
been consumed (plus the seed), never a per-rank iterator, so:
- resuming jumps straight to the saved position instead of replaying batches;
- a run can resume on a different number of ranks: the next global batch starts where the last one
  ended, whatever the world size was, so nothing is skipped or repeated;
- across ranks every row is served exactly once per epoch (an epoch's tail that does not fill a
  global batch is completed from the next epoch's permutation, not dropped).

One optimizer step consumes `world_size × grad_accum × micro_batch_size` consecutive positions;
rank r's micro-step m reads the slice starting at `(m × world_size + r) × micro_batch_size`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np


FEISTEL_ROUNDS = 4  # Luby-Rackoff: four rounds of a keyed round function give a pseudo-random permutation
_MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9))  # odd 64-bit mixing constants
_SHIFT = np.uint64(32)


@functools.lru_cache(maxsize=64)
def _round_keys(seed: int, seq_len: int, epoch: int) -> tuple[np.uint64, ...]:
    state = np.random.SeedSequence([seed, seq_len, epoch]).generate_state(FEISTEL_ROUNDS, dtype=np.uint64)
    return tuple(np.uint64(k) for k in state)


def permute(positions: np.ndarray, num_rows: int, seed: int, seq_len: int, epoch: int) -> np.ndarray:
    """Row at each position (< num_rows) of epoch `epoch`'s shuffled order, without building the order.

    A keyed Feistel network is a bijection on [0, 2^bits); cycle-walking (re-applying it to values
    that land outside [0, num_rows)) restricts it to a bijection on [0, num_rows). So the order is
    a pseudo-random permutation computed for just the positions asked for: O(1) memory for any
    corpus size, and resuming costs nothing.
    """
    bits = max(2, int(num_rows - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    top = np.uint64(64 - bits // 2)  # the round function keeps the hash's top half-width bits
    low_mask = np.uint64((1 << (bits // 2)) - 1)
    keys = _round_keys(seed, seq_len, epoch)
    values = np.asarray(positions, dtype=np.uint64).copy()
    todo = np.ones(values.shape, dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            x = values[todo]
            left, right = x >> half, x & low_mask
            for key in keys:
                mixed = (right ^ key) * _MULTIPLIERS[0]
                mixed ^= mixed >> _SHIFT
                left, right = right, left ^ ((mixed * _MULTIPLIERS[1]) >> top)
            values[todo] = (left << half) | right
            todo[todo] = values[todo] >= np.uint64(num_rows)
    return values.astype(np.int64)


def epoch_permutation(seed: int, seq_len: int, epoch: int, num_rows: int) -> np.ndarray:
    """The whole shuffled row order of one epoch (int64 [num_rows]); pure in its inputs."""
    return permute(np.arange(num_rows), num_rows, seed, seq_len, epoch)


def step_slice(world_size: int, rank: int, micro_step: int, micro_batch_size: int) -> tuple[int, int]:
    """(offset, length) of rank `rank`'s micro-step inside one step's block of global positions."""
    return (micro_step * world_size + rank) * micro_batch_size, micro_batch_size


ORDER_CHUNK = 1 << 16  # positions computed per vectorised call; consecutive reads hit the cache


@dataclass
class GlobalOrder:
    """The endless shuffled stream of one shard set: epoch e is a keyed permutation of its rows.

    Positions are computed a chunk at a time (one vectorised call, ~50 ns a position) and the last
    chunks kept, since the stream reads consecutive positions.
    """

    seed: int  # run seed; the order of epoch e is a pure function of (seed, seq_len, e)
    seq_len: int  # which shard set (each has its own order and position)
    num_rows: int  # rows in the shard set
    _chunks: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.num_rows <= 0:
            raise ValueError(f"shard set seq_len={self.seq_len} has no rows")

    def _chunk(self, epoch: int, index: int) -> np.ndarray:
        key = (epoch, index)
        if key not in self._chunks:
            if len(self._chunks) >= 2:
                self._chunks.pop(next(iter(self._chunks)))
            start = index * ORDER_CHUNK
            positions = np.arange(start, min(start + ORDER_CHUNK, self.num_rows))
            self._chunks[key] = permute(positions, self.num_rows, self.seed, self.seq_len, epoch)
        return self._chunks[key]

    def rows(self, start: int, count: int) -> np.ndarray:
        """Row indices at global positions [start, start + count), crossing epochs where needed."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, offset = divmod(start + done, self.num_rows)
            index, within = divmod(offset, ORDER_CHUNK)
            chunk = self._chunk(epoch, index)
            take = min(count - done, len(chunk) - within)
            out[done:done + take] = chunk[within:within + take]
            done += take
        return out


@dataclass
class SamplerState:
    """The sampler's whole state: JSON-able, world-size free."""

    seed: int  # run seed
    consumed: dict[int, int] = field(default_factory=dict)  # seq_len -> global positions consumed so far

    def to_dict(self, num_rows: dict[int, int] | None = None) -> dict:
        """JSON form; with `num_rows`, also the (derived, informational) epoch per seq_len."""
        data = {"seed": self.seed, "consumed": {str(k): v for k, v in sorted(self.consumed.items())}}
        if num_rows:
            data["epoch"] = {str(k): v // num_rows[k] for k, v in sorted(self.consumed.items()) if k in num_rows}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SamplerState":
        try:
            return cls(seed=int(data["seed"]), consumed={int(k): int(v) for k, v in data["consumed"].items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed sampler state {data!r}: {exc}") from None


class DistributedSampler:
    """Serves rank `rank`'s rows of the current step from the global orders; advances per step."""

    def __init__(self, num_rows: dict[int, int], seed: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank = rank
        self.world_size = world_size
        self.num_rows = dict(num_rows)
        self.state = SamplerState(seed=seed, consumed={k: 0 for k in num_rows})
        self._orders = {k: GlobalOrder(seed, k, n) for k, n in num_rows.items()}

    def micro_batch_rows(self, seq_len: int, micro_batch_size: int, micro_step: int) -> np.ndarray:
        """Rows for this rank's `micro_step` of the current (not yet advanced) optimizer step."""
        if seq_len not in self._orders:
            raise KeyError(f"no shard set with seq_len {seq_len} (have {sorted(self._orders)})")
        offset, count = step_slice(self.world_size, self.rank, micro_step, micro_batch_size)
        return self._orders[seq_len].rows(self.state.consumed[seq_len] + offset, count)

    def micro_batch_positions(self, seq_len: int, micro_batch_size: int, micro_step: int) -> np.ndarray:
        """Global positions, in the `seq_len` stream, of the rows `micro_batch_rows` gives: what masks
        are keyed by, so that a row is masked the same whichever rank and micro-step reads it."""
        offset, count = step_slice(self.world_size, self.rank, micro_step, micro_batch_size)
        start = self.state.consumed[seq_len] + offset
        return np.arange(start, start + count)

    def advance_step(self, seq_len: int, micro_batch_size: int, grad_accum: int) -> None:
        """Mark one optimizer step of the `seq_len` stream consumed (by all ranks together)."""
        self.state.consumed[seq_len] += self.world_size * grad_accum * micro_batch_size

    def state_dict(self) -> dict:
        return self.state.to_dict(self.num_rows)

    def load_state_dict(self, data: dict) -> None:
        state = SamplerState.from_dict(data)
        unknown = sorted(set(state.consumed) - set(self.num_rows))
        if unknown:
            raise ValueError(f"sampler state has positions for seq_len {unknown} but no such shard set is open")
        for seq_len in self._orders:
            self._orders[seq_len] = GlobalOrder(state.seed, seq_len, self.num_rows[seq_len])
        self.state = SamplerState(seed=state.seed, consumed={k: state.consumed.get(k, 0) for k in self.num_rows})
