"""Fine-tune a token classifier on one task and seed: AdamW, linear decay after warm-up, best devel epoch.

The protocol follows BLURB: train for the preset number of epochs, score devel after each one, keep
the best state (in memory) and report that state's test score. Every random choice (head init,
dropout, batch order) derives from the seed, so a (task, seed) unit gives the same numbers when rerun
on the same device type.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from tqdm import tqdm

from engine.io import resolve_device
from engine.ner.errors import NerError
from engine.ner.scoring import score
from engine.ner.tasks import TaskData, preset_for
from engine.ner.windows import Window, collate, gather_word_predictions, make_windows


@dataclass
class FinetuneConfig:
    """Fine-tuning settings; None for lr/epochs/batch_size means the task's BLURB preset."""

    lr: float | None = None  # peak AdamW learning rate (None: task preset)
    epochs: int | None = None  # training epochs (None: task preset)
    batch_size: int | None = None  # windows per optimizer step (None: task preset)
    max_length: int = 512  # pieces per window incl. [CLS]/[SEP]; capped at the model's position limit
    context: int = 64  # overlap pieces on each side of a window; capped at (max_length - 2) // 4
    warmup_ratio: float = 0.1  # fraction of steps with linearly rising learning rate
    weight_decay: float = 0.01  # AdamW decay, not applied to biases and LayerNorm weights
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    eval_batch_size: int = 64  # windows per forward pass when predicting
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    bf16: bool = True  # bf16 autocast on GPU (CPU always runs fp32)
    max_train_sentences: int | None = None  # quick runs: use only the first N train sentences
    progress_bar: bool = True  # tqdm bar per unit: steps, running loss, ETA (like pre-training's)

    def __post_init__(self):
        for name in ("lr", "epochs", "batch_size", "max_train_sentences"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}")
        if self.context < 0:
            raise ValueError(f"context must be ≥ 0, got {self.context}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.eval_batch_size <= 0:
            raise ValueError("weight_decay and max_grad_norm must be ≥ 0 and eval_batch_size > 0")


LOSS_SHOWN_EVERY = 10  # steps between loss updates on the progress bar (each one syncs with the device)


@dataclass
class Recipe:
    """The settings one unit actually ran with (preset filled in, lengths capped to the model)."""

    lr: float  # peak learning rate
    epochs: int  # epochs trained
    batch_size: int  # windows per step
    max_length: int  # pieces per window
    context: int  # overlap pieces per side
    device: str  # "cpu" or "cuda"
    bf16: bool  # autocast used
    eval_batch_size: int  # windows per forward pass when predicting
    history: list[dict] = field(default_factory=list)  # per epoch: loss, devel F1, seconds


def resolve_recipe(config: FinetuneConfig, task: str, model_max_positions: int) -> Recipe:
    """The task preset with the config's overrides, lengths capped to the model."""
    preset = preset_for(task)
    device = resolve_device(config.device, NerError).type
    max_length = min(config.max_length, model_max_positions)
    return Recipe(config.lr or preset.lr, config.epochs or preset.epochs, config.batch_size or preset.batch_size,
                  max_length, min(config.context, (max_length - 2) // 4), device,
                  config.bf16 and device == "cuda", config.eval_batch_size)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _autocast(recipe: Recipe):
    return torch.autocast("cuda", dtype=torch.bfloat16) if recipe.bf16 else contextlib.nullcontext()


def predict_rows(model, windows: list[Window], recipe: Recipe, pad_id: int) -> list[list[int]]:
    """Argmax label id at every position of every window (batched longest-first to limit padding)."""
    model.eval()
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].input_ids))
    rows: list[list[int]] = [[] for _ in windows]
    with torch.no_grad():
        for start in range(0, len(order), recipe.eval_batch_size):
            chunk = order[start:start + recipe.eval_batch_size]
            batch = collate([windows[i] for i in chunk], pad_id)
            with _autocast(recipe):
                logits = model(input_ids=batch["input_ids"].to(recipe.device),
                               attention_mask=batch["attention_mask"].to(recipe.device)).logits
            for i, row in zip(chunk, logits.argmax(-1).cpu().tolist()):
                rows[i] = row
    return rows


def predict_tags(model, tokenizer, sentences_words: list[list[str]], labels: list[str], recipe: Recipe) -> list[list[str]]:
    """Word-level predicted tags for whole sentences, windows merged back (every word exactly once)."""
    windows = make_windows(tokenizer, sentences_words, None, recipe.max_length, recipe.context)
    rows = predict_rows(model, windows, recipe, tokenizer.pad_token_id)
    ids = gather_word_predictions(windows, rows, [len(w) for w in sentences_words])
    return [[labels[i] for i in sentence] for sentence in ids]


def _optimizer(model, recipe: Recipe, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)


def _linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_epoch(model, windows: list, pad_id: int, optimizer, scheduler, config: FinetuneConfig, recipe: Recipe,
                 bar, epoch: int) -> float:
    """One pass over `windows` (already in this epoch's order); returns the mean training loss."""
    model.train()
    losses = []
    for start in range(0, len(windows), recipe.batch_size):
        batch = {k: v.to(recipe.device) for k, v in collate(windows[start:start + recipe.batch_size], pad_id).items()}
        with _autocast(recipe):
            loss = model(**batch).loss
        loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        bar.update()
        if len(losses) % LOSS_SHOWN_EVERY == 0:  # .item() syncs: not every step
            bar.set_postfix(epoch=epoch, loss=f"{float(torch.stack(losses[-LOSS_SHOWN_EVERY:]).mean()):.4f}")
    return float(torch.stack(losses).float().mean()) if losses else float("nan")


def finetune(model, tokenizer, task: TaskData, config: FinetuneConfig, recipe: Recipe, seed: int,
             log: Callable[[str], None] = lambda _: None) -> dict:
    """Train `model` on task train, select the best devel epoch, return devel/test scores and tags."""
    label_id = {label: i for i, label in enumerate(task.labels)}
    train = task.splits["train"].sentences
    windows = make_windows(tokenizer, [s.words for s in train], [[label_id[t] for t in s.tags] for s in train],
                           recipe.max_length, recipe.context)
    devel_words = [s.words for s in task.splits["devel"].sentences]
    devel_gold = [s.tags for s in task.splits["devel"].sentences]
    model.to(recipe.device)
    optimizer = _optimizer(model, recipe, config.weight_decay)
    steps_per_epoch = -(-len(windows) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    scheduler = _linear_warmup_decay(optimizer, int(total * config.warmup_ratio), total)
    order_rng = torch.Generator().manual_seed(seed)
    best_f1, best_state, best_epoch = -1.0, None, 0
    bar = tqdm(total=total, desc=f"{task.name} seed {seed}", unit="step", dynamic_ncols=True,
               disable=not config.progress_bar)
    try:
        for epoch in range(1, recipe.epochs + 1):
            started = time.perf_counter()
            indices = torch.randperm(len(windows), generator=order_rng)
            mean_loss = _train_epoch(model, [windows[i] for i in indices.tolist()], tokenizer.pad_token_id,
                                     optimizer, scheduler, config, recipe, bar, epoch)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"{task.name} seed {seed} epoch {epoch}: training loss is {mean_loss} "
                                         f"(lr {recipe.lr:g}); the run diverged")
            # Model selection: score devel after every epoch, keep the best state in memory.
            devel_f1 = score(devel_gold, predict_tags(model, tokenizer, devel_words, task.labels, recipe))["f1"]
            recipe.history.append({"epoch": epoch, "train_loss": mean_loss, "devel_f1": devel_f1,
                                   "seconds": time.perf_counter() - started})
            bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}", devel_f1=f"{100 * devel_f1:.2f}")
            with bar.external_write_mode():  # the epoch line above the bar, not through it
                log(f"{task.name} seed {seed} epoch {epoch}/{recipe.epochs}: loss {mean_loss:.4f} "
                    f"devel F1 {100 * devel_f1:.2f}")
            if devel_f1 > best_f1:
                best_f1, best_epoch = devel_f1, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    finally:
        bar.close()
    model.load_state_dict(best_state)
    out = {"best_epoch": best_epoch, "train_windows": len(windows)}
    for split in ("devel", "test"):
        sentences = task.splits[split].sentences
        tags = predict_tags(model, tokenizer, [s.words for s in sentences], task.labels, recipe)
        out[split] = {"scores": score([s.tags for s in sentences], tags), "predicted": tags}
    return out
