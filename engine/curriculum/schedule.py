"""The masking curriculum: phases (length, unit, rate schedule, corruption, seq len, micro batch).

A run's curriculum is a `CurriculumConfig` (a preset name, or an explicit list of `PhaseConfig`),
resolved once before training into a `Curriculum` of `Phase`s with absolute optimizer-step
boundaries: phase i covers steps [start_step, end_step), so a boundary happens at exactly the
configured step. Every check that can fail (gaps, overlaps, rates, proportions, a sequence length
with no shards, whole-word masking on shards without word-start flags) fails in `resolve_curriculum`
with an error naming the phase and field, before training starts.

Phase lengths: `steps` (optimizer steps), `tokens` (nominal tokens = sequences × seq_len, turned
into steps with the global batch of that phase, rounded up), or `fraction` (of the run's total
steps; what presets use). A last phase with no length runs to the end of training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from engine.config import ConfigError
from engine.curriculum.masking import MaskingSpec

MLM_CORRUPTION = (0.8, 0.1, 0.1)  # BERT's [MASK] / random token / unchanged proportions


@dataclass
class PhaseConfig:
    """One phase of the curriculum as written in a config file."""

    name: str = "phase"  # shown in logs and TensorBoard when the phase starts
    steps: int | None = None  # length in optimizer steps
    tokens: int | None = None  # length in nominal tokens (sequences × seq_len), rounded up to steps
    fraction: float | None = None  # length as a fraction of the run's total steps
    start_step: int | None = None  # optional explicit start; must equal the previous phase's end
    unit: Literal["token", "word"] = "token"  # token masking or whole-word masking (WWM)
    rate: float = 0.15  # masking rate (constant), or the first rate of a linear / step schedule
    schedule: Literal["constant", "linear", "step"] = "constant"  # how the rate moves inside the phase
    rate_end: float | None = None  # linear: the rate at the phase's last step
    rate_steps: list[float] = field(default_factory=list)  # step: the rates after each milestone
    milestones: list[float] = field(default_factory=list)  # step: phase fractions where the rate changes
    corruption: list[float] | None = field(default_factory=lambda: list(MLM_CORRUPTION))  # [MASK]/random/keep shares; None = all [MASK]
    seq_len: int | None = None  # sequence length served (None = the run's default)
    micro_batch_size: int | None = None  # sequences per rank per micro-step (None = the run's default)

    def __post_init__(self):
        problem = phase_problem(self)
        if problem is not None:
            field_name, message = problem
            raise ValueError(f"phase '{self.name}'.{field_name}: {message}")


@dataclass
class CurriculumConfig:
    """The curriculum section: a preset, or explicit phases (not both)."""

    preset: str | None = "bioptimus"  # bioptimus, flat, seqlen-warmup, mask-decay; None = use phases
    phases: list[PhaseConfig] = field(default_factory=list)  # explicit phases, in order

    def __post_init__(self):
        if self.preset is not None and self.phases:
            raise ValueError("curriculum.preset and curriculum.phases are exclusive; set preset = none "
                             "to use explicit phases")
        if self.preset is None and not self.phases:
            raise ValueError("curriculum needs a preset or at least one phase")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"curriculum.preset {self.preset!r} is unknown (known: {', '.join(PRESETS)})")


@dataclass(frozen=True)
class Phase:
    """A resolved phase: absolute step range and everything masking and the sampler need."""

    index: int  # position in the curriculum, 0-based
    name: str  # from the config
    start_step: int  # first optimizer step of the phase
    end_step: int  # first optimizer step after the phase
    unit: str  # "token" or "word"
    schedule: str  # "constant", "linear" or "step"
    rate: float  # constant rate or first rate
    rate_end: float | None  # linear schedule's last rate
    rate_steps: tuple[float, ...]  # step schedule's later rates
    milestones: tuple[float, ...]  # step schedule's switch points (phase fractions)
    corruption: tuple[float, float, float]  # [MASK] / random / keep shares
    seq_len: int  # sequence length served
    micro_batch_size: int  # sequences per rank per micro-step

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step

    def rate_at(self, step: int) -> float:
        """Masking rate at optimizer `step` (inside the phase); linear reaches rate_end on the last step."""
        offset = step - self.start_step
        if self.schedule == "linear":
            progress = offset / max(1, self.steps - 1)
            return self.rate + (self.rate_end - self.rate) * progress
        if self.schedule == "step":
            passed = sum(1 for m in self.milestones if offset >= math.ceil(m * self.steps))
            return (self.rate, *self.rate_steps)[passed]
        return self.rate

    def spec_at(self, step: int) -> MaskingSpec:
        mask, random, keep = self.corruption
        return MaskingSpec(unit=self.unit, rate=self.rate_at(step), mask_prob=mask, random_prob=random, keep_prob=keep)

    def describe(self) -> str:
        """One line for the console when the phase starts."""
        if self.schedule == "linear":
            rate = f"{self.rate:.0%}→{self.rate_end:.0%} linear"
        elif self.schedule == "step":
            rate = "→".join(f"{r:.0%}" for r in (self.rate, *self.rate_steps)) + " step"
        else:
            rate = f"{self.rate:.0%}"
        corruption = "no corruption" if self.corruption == (1.0, 0.0, 0.0) else \
            "/".join(f"{round(p * 100):d}" for p in self.corruption)
        unit = "whole-word" if self.unit == "word" else "token"
        return (f"phase {self.index + 1} '{self.name}': steps {self.start_step}-{self.end_step - 1}, {unit} "
                f"masking {rate}, {corruption}, seq_len {self.seq_len}, micro batch {self.micro_batch_size}")


@dataclass(frozen=True)
class Curriculum:
    """Resolved phases covering steps [0, total_steps) without gaps or overlaps."""

    phases: tuple[Phase, ...]

    @property
    def total_steps(self) -> int:
        return self.phases[-1].end_step

    def phase_at(self, step: int) -> Phase:
        """The phase that owns optimizer `step` (steps past the end belong to the last phase)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        for phase in self.phases:
            if step < phase.end_step:
                return phase
        return self.phases[-1]

    @property
    def seq_lens(self) -> list[int]:
        return sorted({p.seq_len for p in self.phases})


# Presets: phase lists with fractions of the run. BIOptimus (Pavlova & Makhlouf, 2023) trains the
# four phases in sequence; the paper's exact split is not restated here, so the preset gives each
# phase a quarter of the run. seqlen-warmup follows BERT: 90 % of steps at 128, the last 10 % at 512.
PRESETS: dict[str, list[dict]] = {
    "bioptimus": [
        dict(name="token-15", fraction=0.25, unit="token", rate=0.15),
        dict(name="wwm-15", fraction=0.25, unit="word", rate=0.15),
        dict(name="wwm-20", fraction=0.25, unit="word", rate=0.20),
        dict(name="wwm-20-no-corruption", fraction=0.25, unit="word", rate=0.20, corruption=None),
    ],
    "flat": [dict(name="token-15", fraction=1.0, unit="token", rate=0.15)],
    "seqlen-warmup": [
        dict(name="seq-128", fraction=0.9, unit="token", rate=0.15, seq_len=128),
        dict(name="seq-512", fraction=0.1, unit="token", rate=0.15, seq_len=512),
    ],
    "mask-decay": [dict(name="decay-30-15", fraction=1.0, unit="token", rate=0.30, schedule="linear", rate_end=0.15)],
}


def preset(name: str, total_steps: int | None = None) -> CurriculumConfig | Curriculum:
    """The named preset as a config, or resolved to `total_steps` (default seq len 128, micro batch 8)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown curriculum preset {name!r} (known: {', '.join(PRESETS)})")
    config = CurriculumConfig(preset=None, phases=[PhaseConfig(**p) for p in PRESETS[name]])
    if total_steps is None:
        return config
    return resolve_curriculum(config, total_steps=total_steps, default_seq_len=128, default_micro_batch_size=8)


def _phase_error(i: int, phase: PhaseConfig, field_name: str, message: str) -> ConfigError:
    return ConfigError(f"curriculum.phases[{i}]: phase '{phase.name}'.{field_name}: {message}")


def _bad_rate(value) -> bool:
    return value is None or not 0.0 < float(value) < 1.0


def _schedule_problem(phase: PhaseConfig) -> tuple[str, str] | None:
    if phase.unit not in ("token", "word"):
        return "unit", f"must be 'token' or 'word', got {phase.unit!r}"
    if phase.schedule not in ("constant", "linear", "step"):
        return "schedule", f"must be constant, linear or step, got {phase.schedule!r}"
    if _bad_rate(phase.rate):
        return "rate", f"masking rate must be in (0, 1), got {phase.rate!r}"
    if phase.schedule == "linear" and _bad_rate(phase.rate_end):
        return "rate_end", f"masking rate must be in (0, 1), got {phase.rate_end!r}"
    if phase.schedule != "linear" and phase.rate_end is not None:
        return "rate_end", f"only a linear schedule takes rate_end (schedule is {phase.schedule!r})"
    if phase.schedule != "step":
        if phase.rate_steps or phase.milestones:
            return "rate_steps", f"only a step schedule takes rate_steps/milestones (schedule is {phase.schedule!r})"
        return None
    if not phase.rate_steps or len(phase.milestones) != len(phase.rate_steps):
        return "milestones", ("a step schedule needs one milestone per entry of rate_steps "
                              f"(got {len(phase.milestones)} and {len(phase.rate_steps)})")
    if any(_bad_rate(r) for r in phase.rate_steps):
        return "rate_steps", f"masking rates must be in (0, 1), got {phase.rate_steps}"
    if any(not 0.0 < m < 1.0 for m in phase.milestones) or list(phase.milestones) != sorted(set(phase.milestones)):
        return "milestones", f"must be increasing fractions in (0, 1), got {phase.milestones}"
    return None


def _corruption_problem(phase: PhaseConfig) -> tuple[str, str] | None:
    if phase.corruption is None:
        return None
    values = [float(v) for v in phase.corruption]
    if len(values) != 3:
        return "corruption", f"needs 3 shares ([MASK], random, keep), got {values}"
    if any(not 0.0 <= v <= 1.0 for v in values):
        return "corruption", f"shares must be in [0, 1], got {values}"
    if abs(sum(values) - 1.0) > 1e-6:
        return "corruption", f"shares must sum to 1, got {values} (sum {sum(values):.6g})"
    return None


def _length_problem(phase: PhaseConfig) -> tuple[str, str] | None:
    given = [name for name in ("steps", "tokens", "fraction") if getattr(phase, name) is not None]
    if len(given) > 1:
        return given[1], f"give one of steps, tokens, fraction (got {', '.join(given)})"
    if phase.steps is not None and phase.steps <= 0:
        return "steps", f"a phase needs >= 1 step, got {phase.steps}"
    if phase.tokens is not None and phase.tokens <= 0:
        return "tokens", f"must be > 0, got {phase.tokens}"
    if phase.fraction is not None and not 0.0 < phase.fraction <= 1.0:
        return "fraction", f"must be in (0, 1], got {phase.fraction}"
    if phase.start_step is not None and phase.start_step < 0:
        return "start_step", f"must be >= 0, got {phase.start_step}"
    for name in ("seq_len", "micro_batch_size"):
        if getattr(phase, name) is not None and getattr(phase, name) <= 0:
            return name, f"must be > 0, got {getattr(phase, name)}"
    return None


def phase_problem(phase: PhaseConfig) -> tuple[str, str] | None:
    """(field, message) of the first thing wrong with a phase on its own, or None."""
    return _schedule_problem(phase) or _corruption_problem(phase) or _length_problem(phase)


def resolve_curriculum(config: CurriculumConfig, *, total_steps: int | None, default_seq_len: int,
                       default_micro_batch_size: int, grad_accum: int = 1, world_size: int = 1,
                       available_seq_lens: set[int] | None = None,
                       word_start_seq_lens: set[int] | None = None) -> Curriculum:
    """Turn the config into absolute step ranges, checking everything; errors name phase and field.

    total_steps: the run's optimizer steps (None: the phases' own lengths decide, no fractions).
    available_seq_lens: sequence lengths that have shards (None: not checked).
    word_start_seq_lens: sequence lengths whose shards carry word-start flags (None: not checked).

    Long because every check runs in one pass over the phases and needs the running start step
    and the earlier phases (cumulative fraction rounding, gaps, overlaps); split, that state
    would be threaded through each piece.
    """
    phase_configs = [PhaseConfig(**p) for p in PRESETS[config.preset]] if config.preset else list(config.phases)
    if total_steps is not None and total_steps <= 0:
        raise ConfigError(f"total_steps must be > 0, got {total_steps}")
    resolved: list[Phase] = []
    start = 0
    for i, pc in enumerate(phase_configs):
        if not isinstance(pc, PhaseConfig):
            raise ConfigError(f"curriculum.phases[{i}]: expected a PhaseConfig, got {type(pc).__name__}")
        problem = phase_problem(pc)
        if problem is not None:
            raise _phase_error(i, pc, *problem)
        corruption = (1.0, 0.0, 0.0) if pc.corruption is None else tuple(float(v) for v in pc.corruption)
        seq_len = pc.seq_len if pc.seq_len is not None else default_seq_len
        micro = pc.micro_batch_size if pc.micro_batch_size is not None else default_micro_batch_size
        if available_seq_lens is not None and seq_len not in available_seq_lens:
            raise _phase_error(i, pc, "seq_len", f"no shards with seq_len {seq_len} "
                                                 f"(available: {sorted(available_seq_lens)})")
        if pc.unit == "word" and word_start_seq_lens is not None and seq_len not in word_start_seq_lens:
            raise _phase_error(i, pc, "unit", f"whole-word masking needs word-start flags, but the seq_len "
                                              f"{seq_len} shards have none")
        if pc.start_step is not None and pc.start_step != start:
            kind = "overlaps the previous phase" if pc.start_step < start else "leaves a gap after the previous phase"
            raise _phase_error(i, pc, "start_step", f"{pc.start_step} {kind}, which ends at step {start}")
        if pc.steps is not None:
            steps = pc.steps
        elif pc.tokens is not None:
            steps = math.ceil(pc.tokens / (seq_len * micro * grad_accum * world_size))
        elif pc.fraction is not None:
            if total_steps is None:
                raise _phase_error(i, pc, "fraction", "a fraction needs the run's total steps")
            # Cumulative rounding, so that fractions summing to 1 cover the run exactly.
            before = sum(p.fraction for p in phase_configs[:i] if p.fraction is not None)
            steps = round((before + pc.fraction) * total_steps) - round(before * total_steps)
        elif i == len(phase_configs) - 1 and total_steps is not None:
            steps = total_steps - start
        else:
            raise _phase_error(i, pc, "steps", "needs a length (steps, tokens or fraction); only the last "
                                               "phase of a run with a known total may omit it")
        if steps <= 0:
            raise _phase_error(i, pc, "steps", f"gives {steps} steps; a phase needs >= 1")
        resolved.append(Phase(index=i, name=pc.name, start_step=start, end_step=start + steps, unit=pc.unit,
                              schedule=pc.schedule, rate=float(pc.rate),
                              rate_end=None if pc.rate_end is None else float(pc.rate_end),
                              rate_steps=tuple(float(r) for r in pc.rate_steps),
                              milestones=tuple(float(m) for m in pc.milestones), corruption=corruption,
                              seq_len=seq_len, micro_batch_size=micro))
        start += steps
    if not resolved:
        raise ConfigError("curriculum has no phases")
    if total_steps is not None and start != total_steps:
        last = phase_configs[-1]
        kind = "leaves steps uncovered" if start < total_steps else "runs past the end of training"
        raise _phase_error(len(phase_configs) - 1, last, "steps", f"phases end at step {start} but training has "
                                                                   f"{total_steps} steps: the curriculum {kind}")
    return Curriculum(phases=tuple(resolved))
