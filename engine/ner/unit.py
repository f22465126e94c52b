"""One (task, seed) unit: fresh model, fine-tune, write predictions and `result.json` (written last).

A unit's folder is complete exactly when its `result.json` exists, so a merge never reads half a run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from engine.config import to_dict
from engine.io import atomic_write_text
from engine.ner.conll import write_predictions
from engine.ner.finetune import FinetuneConfig, finetune, resolve_recipe, seed_everything
from engine.ner.model_io import load_token_classifier
from engine.ner.report import UNIT_KIND
from engine.ner.tasks import TaskData


def unit_folder(out_dir: str | Path, task: str, seed: int) -> Path:
    return Path(out_dir) / task / f"seed{seed}"


def run_unit(model_dir: Path, tokenizer, task: TaskData, seed: int, config: FinetuneConfig, out_dir: str | Path,
             log: Callable[[str], None] = lambda _: None, model_name: str | None = None) -> dict:
    """Fine-tune and score one seed on one task; returns the unit result (also written to disk).

    `model_name` is what the report calls the model (default `model_dir`): the checkpoint the user
    named when `model_dir` is a temporary export of it.
    """
    started = time.perf_counter()
    seed_everything(seed)  # before the head is created: its initial weights come from the seed
    model = load_token_classifier(model_dir, task.labels)
    recipe = resolve_recipe(config, task.name, model.config.max_position_embeddings)
    log(f"{task.name} seed {seed}: lr {recipe.lr:g}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
        f"max_length {recipe.max_length} (context {recipe.context}), {recipe.device}{' bf16' if recipe.bf16 else ''}")
    outcome = finetune(model, tokenizer, task, config, recipe, seed, log)
    folder = unit_folder(out_dir, task.name, seed)
    for split in ("devel", "test"):
        write_predictions(folder / f"{split}.pred.tsv", task.splits[split], outcome[split]["predicted"])
    result = {
        "kind": UNIT_KIND, "task": task.name, "seed": seed, "model": model_name or str(model_dir),
        "labels": task.labels, "schemes": task.schemes, "repaired": task.repaired,
        "sizes": {split: len(data.sentences) for split, data in task.splits.items()},
        "train_windows": outcome["train_windows"], "best_epoch": outcome["best_epoch"],
        "devel": outcome["devel"]["scores"], "test": outcome["test"]["scores"],
        "recipe": asdict(recipe), "config": to_dict(config),
        "wall_s": time.perf_counter() - started,
    }
    atomic_write_text(folder / "result.json", json.dumps(result, indent=2) + "\n")
    log(f"{task.name} seed {seed}: devel F1 {100 * result['devel']['f1']:.2f}, test F1 {100 * result['test']['f1']:.2f} "
        f"(best epoch {result['best_epoch']}, {result['wall_s']:.0f} s) → {folder}")
    return result
