"""Curriculum stage: masking (token / whole word, 80/10/10), phase schedule, distributed resumable sampler.

The trainer's entry point is `open_training_stream` / `TrainingStream` (see `stream.py`'s docstring).
"""
from engine.curriculum.masking import (IGNORE_INDEX, MaskedBatch, MaskingSpec, MaskingVocab, make_masking_vocab,
                                       mask_batch, mask_seed)
from engine.curriculum.sampler import DistributedSampler, GlobalOrder, SamplerState, epoch_permutation
from engine.curriculum.schedule import (PRESETS, Curriculum, CurriculumConfig, Phase, PhaseConfig, preset,
                                        resolve_curriculum)
from engine.curriculum.stream import MicroBatch, PhaseInfo, TrainingStream, open_training_stream

__all__ = [
    "IGNORE_INDEX", "MaskedBatch", "MaskingSpec", "MaskingVocab", "make_masking_vocab", "mask_batch", "mask_seed",
    "DistributedSampler", "GlobalOrder", "SamplerState", "epoch_permutation",
    "PRESETS", "Curriculum", "CurriculumConfig", "Phase", "PhaseConfig", "preset", "resolve_curriculum",
    "MicroBatch", "PhaseInfo", "TrainingStream", "open_training_stream",
]
