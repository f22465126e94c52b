"""Optimizers (AdamW, LAMB) and the warm-up + decay learning-rate schedule.

The schedule is a pure function of the optimizer step, so a resumed run gets exactly the lr the
uninterrupted run had; DeepSpeed steps the `LambdaLR` and stores its position in the checkpoint.
"""
from __future__ import annotations

import math

import torch

from engine.training.config import OptimSection


def lr_multiplier(step: int, optim: OptimSection, total_steps: int) -> float:
    """Factor on the peak lr for optimizer step `step` (0-based): linear warm-up, then decay."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.decay == "constant":
        return 1.0
    span = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    if optim.decay == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * shape


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups, as in BERT: decay for matrices, none for biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019): Adam direction scaled per tensor by ||w|| / ||update||.

    A plain torch implementation, so LAMB runs on the CPU accelerator too; bias-corrected moments,
    decoupled weight decay inside the trust ratio, trust ratio 1 where either norm is zero.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(param.grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                update = (exp_avg / (1 - beta1 ** step)) / ((exp_avg_sq / (1 - beta2 ** step)).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(param, alpha=group["weight_decay"])
                weight_norm, update_norm = param.norm(), update.norm()
                trust = torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm,
                                    torch.ones_like(weight_norm))
                param.add_(update * trust, alpha=-group["lr"])
        return loss


def build_optimizer(model: torch.nn.Module, optim: OptimSection, offload: bool, on_cuda: bool) -> torch.optim.Optimizer:
    """The optimizer DeepSpeed wraps; ZeRO-Offload needs DeepSpeed's CPU Adam."""
    groups = param_groups(model, optim.weight_decay)
    if offload:
        if optim.name != "adamw":
            raise ValueError("optim.name: ZeRO optimizer offload supports adamw only")
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, adamw_mode=True)
    if optim.name == "lamb":
        return Lamb(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=on_cuda or None)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSection, total_steps: int):
    """LambdaLR over `lr_multiplier`; DeepSpeed calls `.step()` once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, optim, total_steps))
