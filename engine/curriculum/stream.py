"""What the trainer consumes: masked micro-batches, in curriculum order, prefetched, resumable.

    from engine.curriculum import CurriculumConfig, open_training_stream

    stream = open_training_stream(shard_root, CurriculumConfig(preset="bioptimus"), total_steps=1000,
                                  seed=1234, rank=rank, world_size=world_size,
                                  micro_batch_size=8, grad_accum=4, default_seq_len=128, prefetch=2)
    stream.load_state_dict(client_state["data"])        # only when resuming
    while stream.step < stream.total_steps:
        for _ in range(stream.grad_accum):
            item = stream.next_micro_batch()              # MicroBatch(batch, phase, step, micro_step)
            if item.phase.changed:
                log(item.phase.describe)                  # console + TensorBoard "curriculum/phase"
            loss = model(input_ids=item.batch.input_ids, segment_ids=item.batch.segment_ids,
                         labels=item.batch.labels)
            ...
        client_state["data"] = stream.state_dict()       # JSON-able; reflects consumed batches only
    stream.close()

`TrainingStream(shard_sets, curriculum, seed=..., rank=..., world_size=..., grad_accum=...)` takes
already-open shard sets (`{seq_len: PackedShards}`; anything with `len()`, `get_batch(indices)`,
`.vocab_size`, `.special_ids`) and a resolved `Curriculum` (see `engine.curriculum.schedule`).

Determinism: each optimizer step reads the next `world_size × grad_accum × micro_batch_size`
global positions of the sampler's order (`engine.curriculum.sampler`); micro-batch (step,
micro_step) of rank r takes the slice `step_slice` gives it, and each row is masked by its key
`row_keys(seed, phase, global position)`. A row's mask therefore depends on where it sits in the
run, not on which rank or micro-step reads it: a stream restored with `load_state_dict` yields
bit-identical batches and masks to the uninterrupted run, and runs on different numbers of ranks
with the same global batch read and mask the same rows in every step. A background thread (bounded queue of `prefetch` micro-batches; 0 = no thread)
assembles and masks ahead of compute; `state_dict()` describes only what `next_micro_batch` has
returned, never what is merely prefetched. Resuming on another world size is allowed at a step
boundary: positions are global, so no row is skipped or repeated, and masks stay those of the
uninterrupted run.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from engine.config import ConfigError
from engine.curriculum.masking import MaskedBatch, MaskingVocab, make_masking_vocab, mask_batch, row_keys
from engine.curriculum.sampler import DistributedSampler, SamplerState
from engine.curriculum.schedule import Curriculum, CurriculumConfig, Phase, resolve_curriculum
from engine.curriculum.shard_sets import open_shard_sets, shard_facts

STATE_VERSION = 1


@dataclass(frozen=True)
class PhaseInfo:
    """The curriculum phase a micro-batch belongs to, and the rate it was masked at."""

    index: int  # 0-based phase index
    name: str  # phase name from the config
    start_step: int  # first optimizer step of the phase
    end_step: int  # first optimizer step after the phase
    unit: str  # "token" or "word"
    rate: float  # masking rate used for this micro-batch (schedules move it inside a phase)
    corruption: tuple[float, float, float]  # [MASK] / random / keep shares
    seq_len: int  # sequence length of the batch
    micro_batch_size: int  # sequences in the batch
    describe: str  # one console line describing the phase
    changed: bool  # first micro-batch this stream returns in this phase (log it)


class MicroBatch(NamedTuple):
    """One item of the stream."""

    batch: MaskedBatch  # model-ready tensors [micro_batch_size, seq_len]
    phase: PhaseInfo  # which phase, at what rate
    step: int  # optimizer step this micro-batch belongs to
    micro_step: int  # index inside the step's gradient accumulation, 0..grad_accum-1


@dataclass(frozen=True)
class _Position:
    step: int
    micro_step: int
    consumed: tuple[tuple[int, int], ...]


class _Produced(NamedTuple):
    batch: MaskedBatch
    phase: Phase
    step: int
    micro_step: int
    after: _Position  # the stream position once this item is consumed


class TrainingStream:
    """Rank `rank`'s micro-batches, step by step through the curriculum; see the module docstring."""

    def __init__(self, shard_sets: Mapping[int, Any], curriculum: Curriculum, *, seed: int, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, prefetch: int = 2, vocab: MaskingVocab | None = None):
        if grad_accum <= 0:
            raise ValueError(f"grad_accum must be > 0, got {grad_accum}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        missing = [p for p in curriculum.phases if p.seq_len not in shard_sets]
        if missing:
            raise ConfigError(f"curriculum phase '{missing[0].name}' needs seq_len {missing[0].seq_len} but the "
                              f"stream has shard sets for {sorted(shard_sets)}")
        self.shard_sets = dict(shard_sets)
        self.curriculum = curriculum
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.prefetch = prefetch
        first = next(iter(self.shard_sets.values()))
        if vocab is None:
            root = getattr(first, "root", None)
            vocab_file = Path(root) / "vocab.txt" if root is not None and (Path(root) / "vocab.txt").is_file() else None
            vocab = make_masking_vocab(first.vocab_size, first.special_ids, vocab_file=vocab_file)
        self.vocab = vocab
        self._num_rows = {k: len(s) for k, s in self.shard_sets.items()}
        # Used only by the producer (prefetch thread or inline); the consumer's position is `_position`.
        self._sampler = DistributedSampler(self._num_rows, self.seed, rank=rank, world_size=world_size)
        self._position = _Position(0, 0, tuple((k, 0) for k in sorted(self._num_rows)))
        self._last_phase: int | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    # -- what the trainer reads -------------------------------------------------------------
    @property
    def step(self) -> int:
        """The optimizer step of the next micro-batch."""
        return self._position.step

    @property
    def micro_step(self) -> int:
        return self._position.micro_step

    @property
    def total_steps(self) -> int:
        return self.curriculum.total_steps

    def phase(self) -> Phase:
        """The phase of the next micro-batch."""
        return self.curriculum.phase_at(self._position.step)

    def next_micro_batch(self) -> MicroBatch:
        """The next micro-batch of this rank; raises StopIteration after the curriculum's last step."""
        if self._position.step >= self.curriculum.total_steps:
            raise StopIteration(f"the curriculum ends at step {self.curriculum.total_steps}")
        if self.prefetch == 0:
            produced = self._produce(self._position)
        else:
            if self._thread is None:
                self._start(self._position)
            produced = self._queue.get()
            if isinstance(produced, BaseException):
                self._thread = None
                raise produced
        self._position = produced.after
        changed = produced.phase.index != self._last_phase
        self._last_phase = produced.phase.index
        return MicroBatch(produced.batch, _phase_info(produced.phase, produced.step, changed), produced.step,
                          produced.micro_step)

    def __iter__(self):
        while self._position.step < self.curriculum.total_steps:
            yield self.next_micro_batch()

    def state_dict(self) -> dict:
        """JSON-able position after the last consumed micro-batch (prefetched ones do not count)."""
        sampler = SamplerState(seed=self.seed, consumed=dict(self._position.consumed))
        return {"version": STATE_VERSION, "step": self._position.step, "micro_step": self._position.micro_step,
                "world_size": self.world_size, "grad_accum": self.grad_accum,
                "sampler": sampler.to_dict(self._num_rows),
                "num_rows": {str(k): v for k, v in sorted(self._num_rows.items())},
                "manifest_hash": {str(k): getattr(s, "manifest_hash", None) for k, s in sorted(self.shard_sets.items())}}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` (from `state_dict`) left off; mismatches raise naming the field."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')!r} is not {STATE_VERSION}")
        sampler = SamplerState.from_dict(state["sampler"])
        if sampler.seed != self.seed:
            raise ValueError(f"data state seed {sampler.seed} differs from the run seed {self.seed}")
        for key, saved in state.get("num_rows", {}).items():
            if int(key) in self._num_rows and self._num_rows[int(key)] != saved:
                raise ValueError(f"data state num_rows[{key}] = {saved} but the shard set has "
                                 f"{self._num_rows[int(key)]} rows: not the same shards")
        for key, saved in state.get("manifest_hash", {}).items():
            current = getattr(self.shard_sets.get(int(key)), "manifest_hash", None)
            if saved is not None and current is not None and saved != current:
                raise ValueError(f"data state manifest_hash[{key}] {saved} differs from the open shards' {current}")
        unknown = sorted(set(sampler.consumed) - set(self._num_rows))
        if unknown:
            raise ValueError(f"data state has positions for seq_len {unknown}, which this stream has no shards for")
        step, micro_step = int(state["step"]), int(state["micro_step"])
        if micro_step and (state.get("world_size") != self.world_size or state.get("grad_accum") != self.grad_accum):
            raise ValueError("data state was saved inside an optimizer step; resume it with the same world_size "
                             "and grad_accum, or save at a step boundary")
        if not 0 <= micro_step < self.grad_accum:
            raise ValueError(f"data state micro_step {micro_step} is outside [0, grad_accum={self.grad_accum})")
        self._halt()
        consumed = {k: sampler.consumed.get(k, 0) for k in sorted(self._num_rows)}
        self._position = _Position(step, micro_step, tuple(consumed.items()))
        self._seek(self._position)
        self._last_phase = None

    def close(self) -> None:
        """Stop the prefetch thread (safe to call twice)."""
        self._halt()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- production (runs in the prefetch thread, or inline when prefetch == 0) -------------
    def _produce(self, position: _Position) -> _Produced:
        """The micro-batch at `position`. The sampler stands at `position.consumed`: it advances only
        here, step by step with the position, and `_seek` puts it back where a producer (re)starts."""
        phase = self.curriculum.phase_at(position.step)
        rows = self._sampler.micro_batch_rows(phase.seq_len, phase.micro_batch_size, position.micro_step)
        positions = self._sampler.micro_batch_positions(phase.seq_len, phase.micro_batch_size, position.micro_step)
        raw = self.shard_sets[phase.seq_len].get_batch(rows)
        keys = row_keys(self.seed, phase.index, positions)
        batch = mask_batch(raw, phase.spec_at(position.step), keys, self.vocab)
        if position.micro_step + 1 < self.grad_accum:
            after = _Position(position.step, position.micro_step + 1, position.consumed)
        else:
            self._sampler.advance_step(phase.seq_len, phase.micro_batch_size, self.grad_accum)
            after = _Position(position.step + 1, 0, tuple(sorted(self._sampler.state.consumed.items())))
        return _Produced(batch, phase, position.step, position.micro_step, after)

    def _seek(self, position: _Position) -> None:
        """Put the sampler at `position` before a producer starts from it."""
        self._sampler.load_state_dict(SamplerState(seed=self.seed, consumed=dict(position.consumed)).to_dict())

    def _start(self, position: _Position) -> None:
        self._seek(position)
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._run, args=(position, self._queue, self._stop),
                                        name=f"curriculum-prefetch-rank{self.rank}", daemon=True)
        self._thread.start()

    def _run(self, position: _Position, out: queue.Queue, stop: threading.Event) -> None:
        try:
            while position.step < self.curriculum.total_steps and not stop.is_set():
                item = self._produce(position)
                position = item.after
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, which re-raises it in the trainer
            while not stop.is_set():
                try:
                    out.put(exc, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._thread = None
        self._queue = None


def _phase_info(phase: Phase, step: int, changed: bool) -> PhaseInfo:
    return PhaseInfo(index=phase.index, name=phase.name, start_step=phase.start_step, end_step=phase.end_step,
                     unit=phase.unit, rate=phase.rate_at(step), corruption=phase.corruption, seq_len=phase.seq_len,
                     micro_batch_size=phase.micro_batch_size, describe=phase.describe(), changed=changed)


def open_training_stream(shard_root: str | Path, config: CurriculumConfig, *, total_steps: int, seed: int,
                         rank: int = 0, world_size: int = 1, micro_batch_size: int = 8, grad_accum: int = 1,
                         default_seq_len: int | None = None, split: str = "train", prefetch: int = 2,
                         verify_checksums: bool = True) -> TrainingStream:
    """Open the shard sets the curriculum needs under `shard_root`, validate, and build the stream.

    Raises ConfigError naming the phase and field when a phase asks for a sequence length with no
    shards or for whole-word masking on shards without word-start flags.
    """
    available, with_word_start = shard_facts(shard_root, split)
    if default_seq_len is None:
        default_seq_len = min(available) if available else 128
    curriculum = resolve_curriculum(config, total_steps=total_steps, default_seq_len=default_seq_len,
                                    default_micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                                    world_size=world_size, available_seq_lens=available,
                                    word_start_seq_lens=with_word_start)
    shard_sets = open_shard_sets(shard_root, split, curriculum.seq_lens, verify_checksums)
    return TrainingStream(shard_sets, curriculum, seed=seed, rank=rank, world_size=world_size,
                          grad_accum=grad_accum, prefetch=prefetch)
