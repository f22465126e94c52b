"""Curriculum phases: presets, exact boundaries, rate schedules, and bad configs named precisely."""
from __future__ import annotations

import pytest

from engine.config import ConfigError, from_dict
from engine.curriculum.schedule import CurriculumConfig, PhaseConfig, preset, resolve_curriculum


def _resolve(phases, total_steps=None, **kwargs):
    options = dict(default_seq_len=128, default_micro_batch_size=8)
    options.update(kwargs)
    return resolve_curriculum(CurriculumConfig(preset=None, phases=phases), total_steps=total_steps, **options)


def test_bioptimus_preset_is_the_papers_four_phases():
    curriculum = preset("bioptimus", total_steps=1000)
    summary = [(p.unit, p.rate, p.corruption) for p in curriculum.phases]
    assert summary == [("token", 0.15, (0.8, 0.1, 0.1)), ("word", 0.15, (0.8, 0.1, 0.1)),
                       ("word", 0.20, (0.8, 0.1, 0.1)), ("word", 0.20, (1.0, 0.0, 0.0))]
    assert [(p.start_step, p.end_step) for p in curriculum.phases] == [(0, 250), (250, 500), (500, 750), (750, 1000)]


@pytest.mark.parametrize("total", [7, 10, 1001, 123457])
def test_presets_scale_to_any_total_without_gaps(total):
    for name in ("bioptimus", "flat", "seqlen-warmup", "mask-decay"):
        phases = preset(name, total_steps=total).phases
        assert phases[0].start_step == 0 and phases[-1].end_step == total
        assert all(a.end_step == b.start_step for a, b in zip(phases, phases[1:]))


def test_flat_preset_is_token_masking_15_percent_with_80_10_10():
    (phase,) = preset("flat", total_steps=50).phases
    assert (phase.unit, phase.rate, phase.corruption, phase.steps) == ("token", 0.15, (0.8, 0.1, 0.1), 50)


def test_seqlen_warmup_preset_spends_90_percent_at_128_then_512():
    short, long = preset("seqlen-warmup", total_steps=1000).phases
    assert (short.seq_len, short.steps, long.seq_len, long.steps) == (128, 900, 512, 100)


def test_mask_decay_preset_goes_linearly_from_30_to_15_percent():
    (phase,) = preset("mask-decay", total_steps=101).phases
    assert phase.rate_at(0) == pytest.approx(0.30)
    assert phase.rate_at(50) == pytest.approx(0.225)
    assert phase.rate_at(100) == pytest.approx(0.15)


def test_phase_boundaries_fall_exactly_on_the_configured_steps():
    curriculum = _resolve([PhaseConfig(name="a", steps=3), PhaseConfig(name="b", steps=5, unit="word"),
                           PhaseConfig(name="c", steps=2)])
    owners = [curriculum.phase_at(step).name for step in range(10)]
    assert owners == ["a"] * 3 + ["b"] * 5 + ["c"] * 2
    assert curriculum.total_steps == 10


def test_explicit_start_steps_that_chain_are_accepted():
    curriculum = _resolve([PhaseConfig(name="a", start_step=0, steps=4), PhaseConfig(name="b", start_step=4, steps=4)])
    assert curriculum.phase_at(3).name == "a" and curriculum.phase_at(4).name == "b"


def test_token_lengths_become_steps_of_that_phases_global_batch():
    curriculum = _resolve([PhaseConfig(name="a", tokens=10_000, seq_len=128, micro_batch_size=4),
                           PhaseConfig(name="b", steps=1)], grad_accum=2, world_size=3,
                          available_seq_lens={128})
    # 128 tokens × 4 sequences × 2 micro-steps × 3 ranks = 3072 tokens per step → ceil(10000 / 3072) = 4
    assert curriculum.phases[0].steps == 4


def test_last_phase_without_a_length_runs_to_the_end_of_training():
    curriculum = _resolve([PhaseConfig(name="a", steps=30), PhaseConfig(name="rest")], total_steps=100)
    assert (curriculum.phases[1].start_step, curriculum.phases[1].end_step) == (30, 100)


def test_step_schedule_switches_rate_at_the_milestones():
    (phase,) = _resolve([PhaseConfig(name="s", steps=100, schedule="step", rate=0.1, rate_steps=[0.2, 0.3],
                                     milestones=[0.5, 0.75])]).phases
    assert [phase.rate_at(s) for s in (0, 49, 50, 74, 75, 99)] == [0.1, 0.1, 0.2, 0.2, 0.3, 0.3]


def test_spec_at_carries_unit_rate_and_corruption():
    phase = preset("bioptimus", total_steps=8).phases[3]
    spec = phase.spec_at(phase.start_step)
    assert (spec.unit, spec.rate, spec.mask_prob, spec.random_prob, spec.keep_prob) == ("word", 0.2, 1.0, 0.0, 0.0)


def test_phases_load_from_a_config_dict_with_corruption_none():
    config = from_dict(CurriculumConfig, {"preset": "none", "phases": [
        {"name": "warm", "steps": 10, "unit": "token", "rate": 0.15},
        {"name": "wwm", "steps": 10, "unit": "word", "rate": 0.2, "corruption": "none"}]})
    curriculum = resolve_curriculum(config, total_steps=20, default_seq_len=128, default_micro_batch_size=8)
    assert curriculum.phases[1].corruption == (1.0, 0.0, 0.0)
    assert curriculum.phases[0].corruption == (0.8, 0.1, 0.1)


def test_preset_and_phases_together_are_rejected():
    with pytest.raises(ValueError, match="exclusive"):
        CurriculumConfig(preset="flat", phases=[PhaseConfig(steps=1)])


def test_unknown_preset_is_rejected_listing_the_known_ones():
    with pytest.raises(ValueError, match="bioptimus"):
        CurriculumConfig(preset="bert-style")


@pytest.mark.parametrize("phases, field, words", [
    ([dict(name="a", steps=5), dict(name="b", start_step=3, steps=5)], "start_step", "overlaps"),
    ([dict(name="a", steps=5), dict(name="b", start_step=7, steps=5)], "start_step", "gap"),
    ([dict(name="a", steps=5), dict(name="b", steps=5, rate=0.0)], "rate", r"\(0, 1\)"),
    ([dict(name="a", steps=5), dict(name="b", steps=5, rate=1.5)], "rate", r"\(0, 1\)"),
    ([dict(name="a", steps=5), dict(name="b", steps=5, corruption=[0.8, 0.1, 0.2])], "corruption", "sum to 1"),
    ([dict(name="a", steps=5), dict(name="b", steps=5, schedule="linear")], "rate_end", r"\(0, 1\)"),
    ([dict(name="a", steps=5), dict(name="b", steps=5, schedule="step", rate_steps=[0.2])], "milestones", "one milestone"),
    ([dict(name="a", steps=5), dict(name="b", steps=5, tokens=100)], "tokens", "one of"),
    ([dict(name="a", steps=5), dict(name="b", steps=0)], "steps", ">= 1"),
    ([dict(name="a"), dict(name="b", steps=5)], "steps", "needs a length"),
])
def test_bad_phase_is_rejected_naming_the_phase_and_field(phases, field, words):
    index = 0 if "steps" not in phases[0] else 1
    name = phases[index]["name"]
    with pytest.raises(ConfigError, match=rf"phases\[{index}\]: phase '{name}'\.{field}: .*{words}"):
        config = from_dict(CurriculumConfig, {"preset": "none", "phases": phases})
        resolve_curriculum(config, total_steps=None, default_seq_len=128, default_micro_batch_size=8)


def test_an_unknown_unit_is_rejected_naming_the_phase_index_and_field():
    with pytest.raises(ConfigError, match=r"phases\[1\]\.unit: 'span' is not one of \['token', 'word'\]"):
        from_dict(CurriculumConfig, {"preset": "none", "phases": [dict(name="a", steps=5),
                                                                   dict(name="b", steps=5, unit="span")]})


def test_a_bad_phase_is_rejected_as_soon_as_it_is_built():
    with pytest.raises(ValueError, match=r"phase 'x'\.rate: masking rate must be in \(0, 1\)"):
        PhaseConfig(name="x", rate=1.2)


def test_phases_that_do_not_cover_the_run_are_rejected():
    with pytest.raises(ConfigError, match=r"phases\[1\]: phase 'b'\.steps: .*uncovered"):
        _resolve([PhaseConfig(name="a", steps=5), PhaseConfig(name="b", steps=5)], total_steps=20)
    with pytest.raises(ConfigError, match=r"past the end"):
        _resolve([PhaseConfig(name="a", steps=5), PhaseConfig(name="b", steps=5)], total_steps=8)


def test_seq_len_without_shards_is_rejected_naming_the_phase():
    with pytest.raises(ConfigError, match=r"phases\[1\]: phase 'seq-512'\.seq_len: no shards with seq_len 512"):
        resolve_curriculum(preset("seqlen-warmup"), total_steps=100, default_seq_len=128,
                           default_micro_batch_size=8, available_seq_lens={128})


def test_whole_word_masking_on_shards_without_word_starts_is_rejected():
    with pytest.raises(ConfigError, match=r"phases\[1\]: phase 'wwm-15'\.unit: whole-word masking needs word-start"):
        resolve_curriculum(CurriculumConfig(preset="bioptimus"), total_steps=100, default_seq_len=128,
                           default_micro_batch_size=8, available_seq_lens={128}, word_start_seq_lens=set())
