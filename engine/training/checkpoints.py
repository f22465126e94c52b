"""Checkpoints that are either complete or ignored, plus the per-rank state DeepSpeed does not keep.

Layout of `<dir>/step_00001000/`: DeepSpeed's files (weights, ZeRO shards, client state), then
`rng/rank_<r>.safetensors` (python/numpy/torch RNG states of each rank), then `run_state.json`
(step, resolved config, model config, manifest hash; readable before DeepSpeed starts) and last
`COMPLETE`. DeepSpeed's own `latest` file is never written (`save_latest=False`): in DeepSpeed
0.19 `save_checkpoint` has rank 0 write it as soon as rank 0's own files are done, before the
closing barrier (other ranks may still be writing their ZeRO shards), and by open-truncate-write
(a kill in between leaves it empty), while `torch.save` writes each shard in place; so after a
crash `latest` can name a tag with missing or truncated shards. Our marker is written only after
a barrier that every rank reaches once its DeepSpeed files and RNG file are on disk.
`--resume auto` takes the newest tag that has `COMPLETE`; the `latest_complete` pointer file is
replaced atomically after the marker, for people and for `export_hf.py`.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine.io import atomic_path, atomic_write_text

TAG_PATTERN = re.compile(r"^step_(\d{8,})$")
MARKER = "COMPLETE"
RUN_STATE = "run_state.json"
POINTER = "latest_complete"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the run."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_tags(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders under `ckpt_dir`, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if (m := TAG_PATTERN.match(p.name)) and (p / MARKER).is_file()]
    return [p for _, p in sorted(found)]


def latest_complete(ckpt_dir: Path) -> Path | None:
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def resolve_checkpoint(path: Path) -> Path:
    """A tag folder as given, or the newest complete tag of a checkpoint folder."""
    path = Path(path)
    if (path / MARKER).is_file():
        return path
    newest = latest_complete(path)
    if newest is None:
        raise CheckpointError(f"no complete checkpoint at {path} (a tag folder needs a {MARKER} marker)")
    return newest


def read_run_state(tag_dir: Path) -> dict:
    """The JSON run state of a complete checkpoint (no pickle involved)."""
    path = tag_dir / RUN_STATE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable run state: {exc}") from None


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states as tensors + string metadata (safetensors holds both)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    meta = {"python": json.dumps(random.getstate()),
            "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached_gaussian)])}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    version, internal, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached_gaussian = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))


def save_rng(tag_dir: Path, rank: int) -> None:
    folder = tag_dir / "rng"
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = rng_state()
    with atomic_path(folder / f"rank_{rank}.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_rng(tag_dir: Path, rank: int) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for this rank."""
    path = tag_dir / "rng" / f"rank_{rank}.safetensors"
    if not path.is_file():
        return False
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    set_rng_state(load_file(str(path)), meta)
    return True


def save_checkpoint(engine, ckpt_dir: Path, step: int, client_state: dict, run_state: dict,
                    rank: int, keep_last: int, barrier) -> Path:
    """Collective: every rank calls it. Returns the tag folder, complete when this returns."""
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    if rank == 0 and tag_dir.exists() and not (tag_dir / MARKER).is_file():
        shutil.rmtree(tag_dir)  # left by a crash mid-save: never mix its files with the new ones
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    save_rng(tag_dir, rank)
    barrier()
    if rank == 0:
        atomic_write_text(tag_dir / RUN_STATE, json.dumps(run_state, indent=1, sort_keys=True))
        atomic_write_text(tag_dir / MARKER, f"{step}\n")
        atomic_write_text(ckpt_dir / POINTER, f"{tag}\n")
        prune(ckpt_dir, keep_last)
    barrier()
    return tag_dir


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete complete checkpoints beyond the newest `keep_last`, and incomplete ones older than those."""
    tags = complete_tags(ckpt_dir)
    keep = tags[-keep_last:]
    oldest_kept = int(TAG_PATTERN.match(keep[0].name).group(1)) if keep else 0
    for path in ckpt_dir.iterdir():
        match = TAG_PATTERN.match(path.name)
        if not match or path in keep:
            continue
        if (path / MARKER).is_file() or int(match.group(1)) < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(engine, tag_dir: Path, rank: int) -> dict:
    """Load weights/optimizer/scheduler into `engine` and this rank's RNG; returns the client state."""
    path, client_state = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
    load_rng(tag_dir, rank)
    return client_state or {}
