"""DeepSpeed JSON from `ds_configs/`, completed in Python from the run config and the world size.

The file holds what it is named for (ZeRO stage, precision, offload, bucket sizes); batch sizes,
clipping and the optimizer come from the run config, so one file serves every model and cluster.
A value that the file sets and the run config contradicts is an error, never silently replaced.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from engine.config import ConfigError
from engine.training.config import BatchSection, DeepSpeedSection, OptimSection

PRECISION_KEYS = ("bf16", "fp16")


def read_ds_config(path: str | Path) -> dict:
    """Parse one DeepSpeed JSON file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: cannot parse DeepSpeed config: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    return data


def precision_of(ds: dict) -> str:
    """fp32, bf16 or fp16, as the (completed) DeepSpeed dict enables it."""
    enabled = [key for key in PRECISION_KEYS if ds.get(key, {}).get("enabled", False)]
    if len(enabled) > 1:
        raise ConfigError("DeepSpeed config enables both bf16 and fp16")
    return enabled[0] if enabled else "fp32"


def _check_agrees(ds: dict, key: str, value, where: str) -> None:
    if key in ds and ds[key] != value:
        raise ConfigError(f"{where}: {key}={ds[key]} but the run config gives {value}")


def complete_ds_config(raw: dict, section: DeepSpeedSection, batch: BatchSection, optim: OptimSection,
                       world_size: int, on_cuda: bool) -> dict:
    """The dict for `deepspeed.initialize(config=...)`: the file plus batch, clipping and overrides."""
    where = str(section.config)
    ds = copy.deepcopy(raw)
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{where}: remove 'optimizer'/'scheduler'; the run config's optim section sets them")
    global_batch = batch.micro * batch.grad_accum * world_size
    if batch.global_batch is not None and batch.global_batch != global_batch:
        raise ConfigError(f"batch.global_batch={batch.global_batch} but micro {batch.micro} × grad_accum "
                          f"{batch.grad_accum} × {world_size} ranks = {global_batch}")
    _check_agrees(ds, "train_micro_batch_size_per_gpu", batch.micro, where)
    _check_agrees(ds, "gradient_accumulation_steps", batch.grad_accum, where)
    _check_agrees(ds, "train_batch_size", global_batch, where)
    ds["train_micro_batch_size_per_gpu"] = batch.micro
    ds["gradient_accumulation_steps"] = batch.grad_accum
    ds["train_batch_size"] = global_batch
    ds["gradient_clipping"] = optim.grad_clip

    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if section.zero_stage is not None:
        zero["stage"] = section.zero_stage
    if section.offload_optimizer is not None:
        if section.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_cuda}
        else:
            zero.pop("offload_optimizer", None)
    if section.offload_params is not None:
        if section.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_cuda}
        else:
            zero.pop("offload_param", None)
    if section.precision != "from_file":
        for key in PRECISION_KEYS:
            ds.pop(key, None)
        if section.precision != "fp32":
            ds[section.precision] = {"enabled": True}
    check_ds_config(ds, world_size, on_cuda, where)
    return ds


def offloads_optimizer(ds: dict) -> bool:
    """True when ZeRO keeps optimizer state on the CPU (needs DeepSpeed's CPU Adam)."""
    device = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in ("none", None)


def check_ds_config(ds: dict, world_size: int, on_cuda: bool, where: str) -> None:
    """Reject what DeepSpeed would only trip over after start-up (or never report clearly)."""
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: zero_optimization.stage must be 0-3, got {stage}")
    precision = precision_of(ds)
    if precision == "fp16" and not on_cuda:
        raise ConfigError(f"{where}: fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if zero.get("offload_param", {}).get("device", "none") not in ("none", None) and stage != 3:
        raise ConfigError(f"{where}: offload_param needs ZeRO stage 3, the config has stage {stage}")
    if offloads_optimizer(ds) and stage == 0:
        raise ConfigError(f"{where}: offload_optimizer needs ZeRO stage 1-3, the config has stage 0")
    for key in ("mics_shard_size", "zero_hpz_partition_size"):
        size = zero.get(key, -1 if key == "mics_shard_size" else 1)
        if size > 1 and (world_size % size or size > world_size):
            raise ConfigError(f"{where}: zero_optimization.{key}={size} does not divide the world size {world_size}")
