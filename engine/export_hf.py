"""Export a pre-training checkpoint (any ZeRO stage, stage-3 shards included) as a Hugging Face folder.

    python engine/export_hf.py runs/demo/pretrain/checkpoints runs/demo/hf          # newest complete
    python engine/export_hf.py runs/demo/pretrain/checkpoints/step_00000200 runs/demo/hf --tokenizer runs/demo/shards

The folder (config.json, model.safetensors, tokenizer files) loads with
`AutoModelForMaskedLM.from_pretrained` / `AutoTokenizer.from_pretrained`, and `engine/pretrain.py`
starts from it with `--model.init_from=FOLDER`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder (newest complete tag is used) or one tag folder")
    parser.add_argument("out", type=Path, help="HF folder to write")
    parser.add_argument("--tokenizer", type=Path, default=None, help="folder with tokenizer.json/vocab.txt "
                        "(default: the run's shard folder, from the checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    args = parser.parse_args(argv)
    from engine.bert.hf_io import HFFolderError
    from engine.training.checkpoints import CheckpointError
    from engine.training.export import export_checkpoint

    try:
        print(export_checkpoint(args.checkpoint, args.out, args.tokenizer, args.overwrite))
    except (CheckpointError, HFFolderError) as exc:
        sys.exit(f"error: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
