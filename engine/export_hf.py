"""Export a pre-training checkpoint (any ZeRO stage, stage-3 shards included) as a Hugging Face folder.

    python engine/export_hf.py runs/demo/pretrain/checkpoints runs/demo/hf          # newest complete
    python engine/export_hf.py runs/demo/pretrain/checkpoints/step_00000200 runs/demo/hf --tokenizer runs/demo/shards

The folder (config.json, model.safetensors, tokenizer files) loads with
`AutoModelForMaskedLM.from_pretrained` / `AutoTokenizer.from_pretrained`, and `engine/pretrain.py`
starts from it with `--model.init_from=FOLDER`. Before it is moved into place the export is checked:
no empty or all-zero weight, every tensor and the parameter count the config implies, and the
logits of the exported model equal to the engine's on a probe batch; otherwise one `error:` line
and no output.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from engine.cli import CONFIG_FILE, parse_config, print_config, save_config


@dataclass
class ExportConfig:
    """What `engine/export_hf.py` reads (CHECKPOINT and OUT may be given bare, in that order)."""

    checkpoint: Path  # checkpoint folder (newest complete tag is used) or one tag folder
    out: Path  # HF folder to write
    tokenizer: Path | None = None  # folder with tokenizer.json/vocab.txt (default: the run's shard folder)
    overwrite: bool = False  # replace an existing non-empty out


def parse_args(argv: list[str] | None) -> ExportConfig:
    return parse_config(ExportConfig, argv, __doc__, positionals=["checkpoint", "out"])


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print_config(config, "export_hf")
    from engine.bert.hf_io import HFFolderError
    from engine.training.checkpoints import CheckpointError
    from engine.training.export import export_checkpoint

    try:
        result = export_checkpoint(config.checkpoint, config.out, config.tokenizer, config.overwrite)
    except (CheckpointError, HFFolderError) as exc:
        sys.exit(f"error: {exc}")
    save_config(config, config.out / CONFIG_FILE)
    print(f"{result['folder']} (from {result['checkpoint']}): checked {result['parameters']:,} parameters in "
          f"{result['tensors']} tensors; logits equal the engine's within {result['max_logit_difference']:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
