"""Fine-tune and score an HF BERT folder on biomedical NER (BLURB protocol), several seeds, one report.

    python engine/evaluate_ner.py --model runs/export/hf --data ../shared/data/ner --seeds 1,2,3 --out runs/ner
    python engine/evaluate_ner.py --model HF_DIR --data ../shared/data/ner --tasks ncbi-disease --seeds 1 --epochs 1 --max-train-sentences 500 --out runs/ner_quick
    # one (task, seed) per SLURM array element, merged afterwards:
    python engine/evaluate_ner.py --model HF_DIR --data DATA --tasks bc5cdr-chem --seeds 2 --out runs/ner/unit_bc5cdr-chem_2
    python engine/evaluate_ner.py merge runs/ner/unit_* --out runs/ner

Writes OUT/<task>/seed<k>/{result.json,devel.pred.tsv,test.pred.tsv} per unit and OUT/results.{json,md,png}.
Any `--finetune.<field>=value` (see engine.ner.finetune.FinetuneConfig) overrides a fine-tuning setting.
A DeepSpeed checkpoint must be exported first: python engine/export_hf.py CKPT OUT.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import ConfigError, apply_overrides, from_dict, to_dict
from engine.ner.errors import NerError


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds must list distinct integers, got {text!r}")
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF BERT folder (config, weights, tokenizer)")
    parser.add_argument("--data", required=True, help="folder holding <TASK>/{train,devel,test}.tsv")
    parser.add_argument("--tasks", default=None, help="comma-separated task folders (default: all under --data)")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--epochs", type=int, help="override the task preset")
    parser.add_argument("--lr", type=float, help="override the task preset")
    parser.add_argument("--batch-size", type=int, help="override the task preset")
    parser.add_argument("--max-length", type=int, help="pieces per window (default 512, capped by the model)")
    parser.add_argument("--max-train-sentences", type=int, help="quick runs: first N train sentences only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    parser.add_argument("--scheme", choices=["auto", "iob2", "iob1"], default="auto", help="tag scheme of the input files")
    parser.add_argument("--repair-iob", action="store_true", help="turn an I-X that starts an entity into B-X (warn)")
    return parser


def _finetune_config(args: argparse.Namespace, overrides: list[str]):
    from engine.ner.finetune import FinetuneConfig
    flags = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "max_length": args.max_length,
             "max_train_sentences": args.max_train_sentences, "device": args.device}
    data = {"finetune": {k: v for k, v in flags.items() if v is not None}}
    for item in overrides:
        if not item.startswith("--finetune."):
            raise ConfigError(f"unknown option {item} (fine-tuning settings are --finetune.<field>=value)")
    return from_dict(FinetuneConfig, apply_overrides(data, overrides)["finetune"], "finetune")


def evaluate(argv: list[str]) -> int:
    args, overrides = _parser().parse_known_args(argv)
    config = _finetune_config(args, overrides)
    from engine.io import resolve_device
    from engine.ner.model_io import check_model_folder, load_tokenizer
    from engine.ner.report import write_report
    from engine.ner.tasks import available_tasks, load_task
    from engine.ner.unit import run_unit

    # Check everything (model folder, tokenizer, every data file) before writing anything.
    model_dir = check_model_folder(args.model)
    tokenizer = load_tokenizer(model_dir)
    resolve_device(config.device, NerError)
    names = [t.strip().lower() for t in args.tasks.split(",") if t.strip()] if args.tasks else available_tasks(args.data)
    names = list(dict.fromkeys(names))
    tasks = [load_task(args.data, name, args.scheme, args.repair_iob, config.max_train_sentences) for name in names]
    print(f"model {model_dir}; tasks {', '.join(names)}; seeds {args.seeds}; finetune {to_dict(config)}", flush=True)
    units = [run_unit(model_dir, tokenizer, task, seed, config, args.out, log=lambda m: print(m, flush=True))
             for task in tasks for seed in args.seeds]
    write_report(args.out, units)
    print(f"report: {Path(args.out) / 'results.md'}", flush=True)
    return 0


def merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="evaluate_ner.py merge", description="merge unit results into one report")
    parser.add_argument("folders", nargs="+", help="folders holding unit result.json files (searched recursively)")
    parser.add_argument("--out", required=True, help="folder for results.{json,md,png}")
    args = parser.parse_args(argv)
    from engine.ner.report import find_unit_results, write_report
    units = find_unit_results(args.folders)
    write_report(args.out, units)
    print(f"merged {len(units)} units → {Path(args.out) / 'results.md'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return merge(argv[1:]) if argv[:1] == ["merge"] else evaluate(argv)
    except (NerError, ConfigError, FloatingPointError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
