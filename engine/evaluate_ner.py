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

import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.cli import CONFIG_FILE, Flag, parse_config, print_config, save_config
from engine.config import ConfigError
from engine.ner.errors import NerError
from engine.ner.finetune import FinetuneConfig
from engine.ner.iob import Scheme


@dataclass
class EvaluateConfig:
    """What `engine/evaluate_ner.py` reads: model, tasks and seeds, and the `[finetune]` settings."""

    model: str  # HF BERT folder (config, weights, tokenizer)
    data: str  # folder holding <TASK>/{train,devel,test}.tsv
    out: str  # output folder
    tasks: list[str] = field(default_factory=list)  # task folders, comma-separated (default: all under data)
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])  # fine-tuning seeds, comma-separated
    scheme: Scheme = "auto"  # tag dialect of the input files (auto: detected per file, printed and reported)
    entity_type: str | None = None  # entity type of bare B/I/O tags (default: the task folder's name)
    repair_iob: bool = False  # turn an I-X that starts an entity into B-X (warn)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # fine-tuning; None values = task preset

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must list distinct integers, got {self.seeds}")


@dataclass
class MergeConfig:
    """What `engine/evaluate_ner.py merge` reads."""

    folders: list[str]  # folders holding unit result.json files (searched recursively)
    out: str  # folder for results.{json,md,png}


FLAGS = [
    Flag("--epochs", "finetune.epochs"),
    Flag("--lr", "finetune.lr"),
    Flag("--batch-size", "finetune.batch_size"),
    Flag("--max-length", "finetune.max_length"),
    Flag("--max-train-sentences", "finetune.max_train_sentences"),
    Flag("--device", "finetune.device"),
    Flag("--repair-iob", "repair_iob", value=True),
    Flag("--entity-type", "entity_type"),
]


def parse_args(argv: list[str] | None) -> EvaluateConfig | MergeConfig:
    """`merge FOLDER... --out OUT` gives a MergeConfig; anything else an EvaluateConfig."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return parse_config(MergeConfig, argv[1:], "Merge unit results into one report.", positionals=["folders"],
                            prog="evaluate_ner.py merge")
    return parse_config(EvaluateConfig, argv, __doc__, FLAGS)


def evaluate(config: EvaluateConfig) -> int:
    print_config(config, "evaluate_ner")
    from engine.io import resolve_device
    from engine.ner.model_io import check_model_folder, load_tokenizer
    from engine.ner.report import check_out_holds_no_other_model, write_report
    from engine.ner.tasks import available_tasks, load_task
    from engine.ner.unit import run_unit

    # Check everything (model folder, tokenizer, every data file) before writing anything.
    model_dir = check_model_folder(config.model)
    check_out_holds_no_other_model(config.out, model_dir)
    tokenizer = load_tokenizer(model_dir)
    resolve_device(config.finetune.device, NerError)
    names = [t.strip().lower() for t in config.tasks if t.strip()] or available_tasks(config.data)
    names = list(dict.fromkeys(names))
    tasks = [load_task(config.data, name, config.scheme, config.repair_iob, config.finetune.max_train_sentences,
                       config.entity_type)
             for name in names]
    for task in tasks:
        print(f"{task.name}: tags " + ", ".join(f"{split} {scheme}" for split, scheme in task.schemes.items()), flush=True)
    print(f"model {model_dir}; tasks {', '.join(names)}; seeds {config.seeds}", flush=True)
    units = [run_unit(model_dir, tokenizer, task, seed, config.finetune, config.out, log=lambda m: print(m, flush=True))
             for task in tasks for seed in config.seeds]
    write_report(config.out, units)
    save_config(config, Path(config.out) / CONFIG_FILE)
    print(f"report: {Path(config.out) / 'results.md'}", flush=True)
    return 0


def merge(config: MergeConfig) -> int:
    from engine.ner.report import find_unit_results, write_report
    units = find_unit_results(config.folders)
    write_report(config.out, units)
    save_config(config, Path(config.out) / CONFIG_FILE)
    print(f"merged {len(units)} units → {Path(config.out) / 'results.md'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        return merge(config) if isinstance(config, MergeConfig) else evaluate(config)
    except (NerError, ConfigError, FloatingPointError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
