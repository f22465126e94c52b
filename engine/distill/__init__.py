"""Distillation init: move a general-domain BERT teacher onto a new (biomedical) vocabulary.

Stages, one module each: `vocab` (align the two vocabularies, build the new tokenizer), `teacher`
(load and run the old model, cached), `contexts` (find sentences for each new token in one corpus
pass), `head` (fit an MLM head on a teacher that has none), `methods` (random / mean / fvt /
contextual / distill rows), `student` (assemble and save the HF folder), `report` (coverage, timings, nearest neighbours), `pipeline` (the whole step).
"""
from engine.distill.errors import DistillError

__all__ = ["DistillError"]
