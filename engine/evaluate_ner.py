"""Fine-tune and score an HF BERT folder on biomedical NER (BLURB protocol), several seeds, one report.

    python engine/evaluate_ner.py --model runs/export/hf --data ../shared/data/ner --seeds 1,2,3 --out runs/ner
    python engine/evaluate_ner.py --model HF_DIR --data ../shared/data/ner --tasks ncbi-disease --seeds 1 --epochs 1 --max-train-sentences 500 --out runs/ner_quick
    # one (task, seed) per SLURM array element, merged afterwards:
    python engine/evaluate_ner.py --model HF_DIR --data DATA --tasks bc5cdr-chem --seeds 2 --out runs/ner/unit_bc5cdr-chem_2
    python engine/evaluate_ner.py merge runs/ner/unit_* --out runs/ner

    # straight from pre-training: a run's checkpoint folder (newest complete tag) or one tag folder
    python engine/evaluate_ner.py --model runs/pretrain/checkpoints --data ../shared/data/ner --out runs/ner
    # the BioBERT/BLUE distribution: bare B/I/O tags, typed by the folder name (or --entity-type)
    python engine/evaluate_ner.py --model HF_DIR --data biobert_ner --tasks BC2GM,linnaeus --out runs/ner_biobert

Writes OUT/<task>/seed<k>/{result.json,devel.pred.tsv,test.pred.tsv} per unit and OUT/results.{json,md,png}.
Tag dialects (IOB1, IOB2, IOBES/BIOES, BILOU; typed or bare) are detected per file, printed and
stored in the report; prediction files are written in the input's dialect, line endings and
-DOCSTART- lines. A DeepSpeed checkpoint is exported (the code of export_hf.py) to a temporary HF
folder under $TMPDIR, removed at the end.
Any `--finetune.<field>=value` (see engine.ner.finetune.FinetuneConfig) overrides a fine-tuning setting.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from engine.cli import CONFIG_FILE, Flag, parse_config, print_config, save_config
from engine.config import ConfigError
from engine.ner.errors import NerError
from engine.ner.finetune import FinetuneConfig
from engine.ner.iob import Scheme


@dataclass
class EvaluateConfig:
    """What `engine/evaluate_ner.py` reads: model, tasks and seeds, and the `[finetune]` settings."""

    model: str  # HF BERT folder (config, weights, tokenizer), or a pre-training checkpoint folder or tag
    data: str  # folder holding <TASK>/{train,devel,test}.tsv
    out: str  # output folder
    tokenizer: str | None = None  # checkpoint model only: tokenizer folder (default: the run's shard folder)
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


@contextlib.contextmanager
def _model_folder(model: str, tokenizer: str | None) -> Iterator[Path]:
    """The HF folder to evaluate: `model` itself, or its checkpoint exported to a temporary folder."""
    from engine.ner.model_io import looks_like_deepspeed_checkpoint
    if not looks_like_deepspeed_checkpoint(Path(model)):
        yield Path(model)
        return
    from engine.bert.hf_io import HFFolderError
    from engine.training.checkpoints import CheckpointError
    from engine.training.export import exported_checkpoint
    print(f"model {model} is a pre-training checkpoint: exporting it to a temporary HF folder", flush=True)
    cleanup = contextlib.ExitStack()
    try:
        folder = cleanup.enter_context(exported_checkpoint(Path(model), Path(tokenizer) if tokenizer else None))
    except (CheckpointError, HFFolderError) as exc:
        raise NerError(f"{model}: cannot export the checkpoint: {exc}") from None
    with cleanup:
        yield folder


def evaluate(config: EvaluateConfig) -> int:
    from engine.ner.report import check_out_holds_no_other_model

    print_config(config, "evaluate_ner")
    # Before any export or fine-tuning: results are recorded under the model as the user named it.
    check_out_holds_no_other_model(config.out, config.model)
    with _model_folder(config.model, config.tokenizer) as folder:
        return _evaluate(config, folder)


def _evaluate(config: EvaluateConfig, folder: Path) -> int:
    from engine.io import resolve_device
    from engine.ner.model_io import check_model_folder, load_tokenizer
    from engine.ner.report import write_report
    from engine.ner.tasks import available_tasks, load_task
    from engine.ner.unit import run_unit

    # Check everything (model folder, tokenizer, every data file) before writing anything.
    model_dir = check_model_folder(folder)
    tokenizer = load_tokenizer(model_dir)
    resolve_device(config.finetune.device, NerError)
    names = [t.strip().lower() for t in config.tasks if t.strip()] or available_tasks(config.data)
    names = list(dict.fromkeys(names))
    tasks = [load_task(config.data, name, config.scheme, config.repair_iob, config.finetune.max_train_sentences,
                       config.entity_type)
             for name in names]
    for task in tasks:
        print(f"{task.name}: tags " + ", ".join(f"{split} {scheme}" for split, scheme in task.schemes.items()), flush=True)
    print(f"model {config.model}; tasks {', '.join(names)}; seeds {config.seeds}", flush=True)
    units = [run_unit(model_dir, tokenizer, task, seed, config.finetune, config.out, log=lambda m: print(m, flush=True),
                      model_name=config.model)
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
