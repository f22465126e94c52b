"""The JSON envelope every benchmark writes: figures + machine + commit + config, written atomically."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

from engine.io import atomic_write_text


def machine_info() -> dict:
    """Facts a reader needs to compare numbers: CPU, cores, threads, GPU, library versions."""
    import numpy
    import torch
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    for lib in ("transformers", "tokenizers", "deepspeed", "datasets"):
        try:
            info[lib] = __import__(lib).__version__
        except Exception:  # a missing optional baseline is reported, not fatal
            info[lib] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except OSError:
        return None


def write_record(path: str | Path, name: str, figures: dict, config: dict) -> dict:
    """Write {"benchmark", "figures"..., "machine", "commit", "config", "time"} to `path` atomically."""
    record = {"benchmark": name, **figures, "machine": machine_info(), "commit": git_commit(),
              "config": config, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items()}, indent=2))
    return record
