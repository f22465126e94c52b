"""The study's sizes: how much corpus, how many steps, seeds and NER sentences each part gets.

`cpu` is sized for about an hour on a 2-core machine, `gpu` for about eight minutes on one GPU
(`make gpu-check`), `tiny` for the test that regenerates a report from a real run in a few minutes.
The numbers of a run are written into its `study.json`, so a report always states what it measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class StudySize:
    """Every quantity of one study run."""

    train_docs: int  # corpus documents cut into pre-training shards (5 % of rows held out)
    context_docs: int  # the next documents: where contextual/distill init look for contexts
    seq_len: int  # tokens per row in every pre-training run
    seeds: tuple[int, ...]  # seeds of every compared run (init, data order, masks, dropout, NER)
    teacher_steps: int  # MLM warm-up steps of the headless teacher (configs/teacher_mlm.toml)
    teacher_batch: int  # rows per warm-up step
    teacher_eval_batches: int  # held-out batches (of teacher_batch rows) per warm-up evaluation
    methods: tuple[str, ...]  # init methods compared (random first: the others are measured against it)
    init_k: int  # contexts per new token for contextual/distill
    distill_epochs: int  # passes over the contexts for `distill`
    steps: int  # pre-training steps after each init, and of each masking arm
    batch: int  # rows per pre-training step
    lr: float  # peak AdamW learning rate of the pre-training runs
    warmup: int  # linear warm-up steps
    eval_every: int  # steps between held-out evaluations
    eval_rows: int  # held-out rows (fixed rows, fixed masks) per evaluation
    masking_init: str  # init the masking arms start from (the recommended one)
    arms: tuple[str, ...]  # curriculum presets compared at the same token budget
    ner_tasks: tuple[str, ...]  # BLURB NER tasks fine-tuned after each masking arm
    ner_train_sentences: int | None  # first N train sentences (None: all)
    ner_eval_sentences: int | None  # first N devel and test sentences (None: all)
    ner_epochs: int
    ner_lr: float
    ner_batch: int
    ner_max_length: int  # pieces per NER window
    device: str = "auto"  # auto: cuda when available
    notes: tuple[str, ...] = field(default_factory=tuple)  # what a reader must know about this size


CPU = StudySize(
    train_docs=300, context_docs=600, seq_len=128, seeds=(1, 2, 3),
    teacher_steps=200, teacher_batch=16, teacher_eval_batches=16,
    methods=("random", "fvt", "contextual", "distill"), init_k=2, distill_epochs=1,
    steps=80, batch=8, lr=1e-4, warmup=8, eval_every=10, eval_rows=128,
    masking_init="fvt", arms=("flat", "bioptimus"),
    ner_tasks=("ncbi-disease", "bc5cdr-chem"), ner_train_sentences=1000, ner_eval_sentences=2000,
    ner_epochs=1, ner_lr=2e-4, ner_batch=16, ner_max_length=128, device="cpu",
    notes=("NER trains on the first 1,000 train sentences for one epoch and scores the first 2,000 devel "
           "and test sentences (all of NCBI-disease's): F1 far below BLURB's, comparable only between arms.",))

GPU = replace(
    CPU, train_docs=1000, context_docs=1000, teacher_steps=1000, teacher_batch=64, teacher_eval_batches=8,
    init_k=8, distill_epochs=2, steps=600, batch=32, lr=2e-4, warmup=30, eval_every=50, eval_rows=512,
    ner_train_sentences=None, ner_eval_sentences=None, ner_epochs=2, ner_lr=5e-5, ner_batch=32, ner_max_length=256,
    device="cuda",
    notes=("Sized by estimate for about eight minutes on one H100/H200 (not yet run on a GPU): the CPU size's "
           "step counts × 5-7.5, batches × 4, all NER sentences.",))

TINY = replace(
    CPU, train_docs=160, context_docs=40, seq_len=64, seeds=(1, 2), teacher_steps=3, teacher_batch=4,
    methods=("random", "fvt"), ner_tasks=("ncbi-disease",),
    teacher_eval_batches=2, init_k=1, steps=4, batch=4, warmup=1, eval_every=2, eval_rows=8,
    ner_train_sentences=24, ner_eval_sentences=24, ner_batch=8, ner_max_length=64,
    notes=("A smoke-sized run for the test of the report: its numbers mean nothing.",))

SIZES = {"tiny": TINY, "cpu": CPU, "gpu": GPU}
