"""Training metrics to the console, `metrics.jsonl` and TensorBoard; throughput, TFLOP/s and MFU.

Only rank 0 writes. MFU = achieved model FLOP/s ÷ the device's dense peak for the run's precision
(vendor datasheet figures, no sparsity), looked up by the CUDA device name.
"""
from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch

from engine.io import atomic_write_text

# (substring of torch.cuda.get_device_name, peak dense FLOP/s for bf16/fp16, for fp32 (TF32 off))
PEAK_FLOPS: list[tuple[str, float, float]] = [
    ("H200", 989e12, 67e12),
    ("H100 NVL", 835e12, 60e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("GH200", 989e12, 67e12),
    ("A100", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
    ("A10G", 125e12, 31.2e12),
    ("L4", 121e12, 30.3e12),
    ("V100", 125e12, 15.7e12),
]


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a CUDA device for `precision`, or None when the device is unknown."""
    for key, half, single in PEAK_FLOPS:
        if key in device_name:
            return single if precision == "fp32" else half
    return None


def peak_memory_gib() -> float:
    """Peak accelerator memory on CUDA, else this process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def throughput(tokens: float, samples: float, seconds: float, flops_per_token: float,
               world_size: int, peak: float | None) -> dict:
    """Per-interval rates from totals over all ranks; MFU per device when the peak is known."""
    seconds = max(seconds, 1e-9)
    tflops = tokens * flops_per_token / seconds / 1e12
    rates = {"tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds, "tflops": tflops}
    if peak:
        rates["mfu"] = tflops * 1e12 / (peak * world_size)
    return rates


class MetricsWriter:
    """Console + JSONL + TensorBoard sink for rank 0; every other rank gets a silent one."""

    def __init__(self, out_dir: Path, enabled: bool, jsonl: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.jsonl_path = out_dir / "metrics.jsonl" if enabled and jsonl else None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.jsonl_path is not None:
            keep_until(self.jsonl_path, resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_step is None else resume_step + 1  # drop events of steps to be redone
            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, kind: str, step: int, values: dict, console: bool = True, echo=print) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **values}
        if self.jsonl_path is not None:
            with open(self.jsonl_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)
            self.tb.flush()
        if console:
            echo(f"[{kind} step {step}] " + " ".join(f"{k}={_short(v)}" for k, v in values.items()))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class MetricsFileError(ValueError):
    """A metrics.jsonl line that is not a JSON record, before the last line."""


def parse_records(path: Path, say=None) -> list[dict]:
    """The records of a metrics.jsonl, in order, read tolerantly: a torn last line (what a kill
    mid-write leaves) is dropped and said so; an unreadable line before it is an error naming it."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if position == len(numbered) - 1:
                (say or (lambda m: print(m, file=sys.stderr)))(
                    f"note: {path}:{number}: dropped a torn last line (a run stopped while writing it)")
                break
            raise MetricsFileError(f"{path}:{number}: not a metrics record ({exc})") from None
        records.append(record)
    return records


def keep_until(path: Path, step: int | None) -> None:
    """On resume, drop records past the checkpoint's step (they are about to be redone) and a torn
    last line; replaced atomically, so a kill here leaves the old file."""
    if step is None or not path.is_file():
        return
    kept = [r for r in parse_records(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics.jsonl, in order (a torn last line dropped, said so)."""
    return parse_records(path)
