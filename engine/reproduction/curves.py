"""Short pre-training runs of the real Trainer with a held-out MLM loss curve on fixed rows and masks.

Every init method and every masking arm of the study (and the distillation benchmark) is trained by
this one function, in this process (one rank, ZeRO-0 fp32), through `engine.training.trainer.Trainer`:
the same loop as `engine/pretrain.py`. The curve is measured on the same held-out rows with the same
masks at every evaluation and in every run of a comparison, so curves differ only by the model.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from engine.curriculum.masking import MaskingSpec, make_masking_vocab, mask_batch, mask_seed


class HeldOutCurve:
    """The trainer's evaluation hook: masked-token cross-entropy on fixed rows and fixed masks, over all
    targets and over new-token targets, with the standard error of each mean; appended to `curve`.

    `mask_key` fixes the masks: runs with different training seeds share the same held-out targets.
    """

    def __init__(self, valid, new_ids: list[int], rows: int, batch_size: int, mask_key: int,
                 spec: MaskingSpec = MaskingSpec(unit="token")):
        vocab_file = Path(valid.root) / "vocab.txt"
        vocab = make_masking_vocab(valid.vocab_size, valid.special_ids,
                                   vocab_file=vocab_file if vocab_file.is_file() else None)
        index = np.arange(min(rows, len(valid)))
        self.batches = [mask_batch(valid.get_batch(index[i:i + batch_size]), spec, mask_seed(mask_key, -1, i, 0), vocab)
                        for i in range(0, len(index), batch_size)]
        self.new_token = torch.zeros(valid.vocab_size + 1, dtype=torch.bool)
        if new_ids:
            self.new_token[torch.as_tensor(new_ids)] = True
        self.curve: list[dict] = []
        self.seconds = 0.0  # spent evaluating: taken out of the run's training time
        self.trainer = None  # set once built: evaluations are stamped with its step

    def evaluate(self, engine) -> dict:
        """Mean loss and its standard error over all targets and over new-token targets."""
        started = time.perf_counter()
        device = engine.device
        engine.eval()
        losses, new = [], []
        with torch.no_grad():
            for batch in self.batches:
                out = engine(input_ids=batch.input_ids.to(device), segment_ids=batch.segment_ids.to(device),
                             labels=batch.labels.to(device), return_logits=True)
                labels = batch.labels[batch.labels != -100].to(device)
                losses.append(torch.nn.functional.cross_entropy(out.logits.float(), labels, reduction="none").cpu())
                new.append(self.new_token.to(device)[labels].cpu())
        engine.train()
        losses_all, is_new = torch.cat(losses).double(), torch.cat(new)
        point = {"step": self.trainer.state.step if self.trainer is not None else 0,
                 **mean_and_error("loss", losses_all), **mean_and_error("new_token_loss", losses_all[is_new]),
                 "targets": int(losses_all.numel()), "new_targets": int(is_new.sum())}
        self.curve.append(point)
        self.seconds += time.perf_counter() - started
        return {"loss": point["loss"], "new_token_loss": point["new_token_loss"]}


def mean_and_error(name: str, values: torch.Tensor) -> dict:
    """{name: mean, name_se: standard error of the mean}; NaN for fewer than two values."""
    if values.numel() < 2:
        return {name: math.nan, f"{name}_se": math.nan}
    return {name: round(float(values.mean()), 4), f"{name}_se": round(float(values.std() / math.sqrt(values.numel())), 4)}


def train_with_curve(config, held_out: HeldOutCurve, device: torch.device, keep_checkpoint: bool = False) -> dict:
    """Run `config` (a PretrainConfig) from scratch with `held_out` as its evaluation hook:
    {"curve": held-out points, "train_seconds": the loop's time without the evaluations}.

    The held-out loss is taken once before the first step (the init itself) and at every
    `eval.interval`. The run's checkpoints are scratch unless `keep_checkpoint` (the study exports
    the masking arms for NER).
    """
    from engine.training.setup import Dist, init_distributed, prepare_run, shutdown_distributed
    from engine.training.trainer import Trainer

    shutil.rmtree(config.out_dir, ignore_errors=True)
    dist = Dist(rank=0, world_size=1, local_rank=device.index or 0, device=device)
    plan = prepare_run(config, dist, resume=None)
    plan.validation = held_out
    trainer = None
    try:
        init_distributed(dist)
        trainer = held_out.trainer = Trainer(plan)
        held_out.evaluate(trainer.engine)
        started, eval_before = time.perf_counter(), held_out.seconds
        trainer.train()
        train_seconds = time.perf_counter() - started - (held_out.seconds - eval_before)
    finally:
        if trainer is not None:
            trainer.close()
        plan.stream.close()
        shutdown_distributed()
    if not keep_checkpoint:
        shutil.rmtree(Path(config.out_dir) / "checkpoints", ignore_errors=True)
    return {"curve": held_out.curve, "train_seconds": round(train_seconds, 2)}

