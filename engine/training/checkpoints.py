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

`COMPLETE` is JSON: the step and the size + sha256 of every other file of the tag. Resume and
export verify them first, so a flipped byte, a truncated shard or a planted extra file is found
before DeepSpeed reads anything; `--resume auto` then says which tag it skips and falls back to
the previous intact one. Checksums catch damage, not malice (whoever can plant a file can rewrite
the marker): loading is made safe separately, by `engine.training.safe_load`.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sys
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


def step_of(tag_dir: Path) -> int:
    return int(TAG_PATTERN.match(tag_dir.name).group(1))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tag_files(tag_dir: Path) -> list[str]:
    """Every file of a tag folder but the marker, as POSIX paths relative to it."""
    return sorted(p.relative_to(tag_dir).as_posix() for p in tag_dir.rglob("*")
                  if p.is_file() and p.name != MARKER)


def write_marker(tag_dir: Path, step: int) -> None:
    """Record size and sha256 of every file, then (atomically) declare the tag complete."""
    files = {name: {"size": (tag_dir / name).stat().st_size, "sha256": sha256_of(tag_dir / name)}
             for name in tag_files(tag_dir)}
    atomic_write_text(tag_dir / MARKER, json.dumps({"step": step, "files": files}, indent=1, sort_keys=True))


def verify_checkpoint(tag_dir: Path) -> None:
    """Raise `CheckpointError` naming the first file that is missing, extra, resized or altered."""
    marker = tag_dir / MARKER
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{marker}: unreadable marker or no checksums in it ({exc})") from None
    present = tag_files(tag_dir)
    extra = sorted(set(present) - set(files))
    if extra:
        raise CheckpointError(f"{tag_dir / extra[0]}: file not recorded in {MARKER} (added after the save)")
    for name, expected in sorted(files.items()):
        path = tag_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (recorded in {MARKER})")
        if path.stat().st_size != expected["size"]:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, {expected['size']} when saved "
                                  f"(truncated or replaced)")
        if sha256_of(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: sha256 differs from the one recorded when saved (damaged)")


def newest_intact(ckpt_dir: Path, say=None) -> Path | None:
    """The newest complete tag whose files verify; each damaged newer one is named on one line."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    damaged = []
    for tag_dir in reversed(complete_tags(ckpt_dir)):
        try:
            verify_checkpoint(tag_dir)
        except CheckpointError as exc:
            say(f"warning: skipping damaged checkpoint {tag_dir.name}: {exc}")
            damaged.append(tag_dir)
            continue
        return tag_dir
    if damaged:
        raise CheckpointError(f"{ckpt_dir}: every complete checkpoint is damaged (newest: {damaged[0].name})")
    return None


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


def resolve_checkpoint(path: Path, say=None) -> Path:
    """A verified tag folder: the one given, or the newest intact tag of a checkpoint folder."""
    path = Path(path)
    if (path / MARKER).is_file():
        verify_checkpoint(path)
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    newest = newest_intact(path, say)
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
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty RNG state file")
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
    if rank == 0 and tag_dir.exists():
        # Left by a crash mid-save, or by a timeline this run abandoned when it resumed from an
        # older tag: never mix its files with the new ones. Unmark first, so a kill mid-delete
        # leaves an incomplete tag rather than a complete-looking damaged one.
        (tag_dir / MARKER).unlink(missing_ok=True)
        shutil.rmtree(tag_dir)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    save_rng(tag_dir, rank)
    barrier()
    if rank == 0:
        atomic_write_text(tag_dir / RUN_STATE, json.dumps(run_state, indent=1, sort_keys=True))
        write_marker(tag_dir, step)
        atomic_write_text(ckpt_dir / POINTER, f"{tag}\n")
        prune(ckpt_dir, keep_last, step)
    barrier()
    return tag_dir


def prune(ckpt_dir: Path, keep_last: int, current_step: int) -> None:
    """Delete complete checkpoints beyond the newest `keep_last` up to `current_step` (the one just
    written and verified by its marker), and incomplete ones older than those.

    Tags past `current_step` belong to a timeline the run abandoned by resuming from an older tag
    (the newest was damaged, or the user chose an older one): they must not count among the kept
    ones, or a damaged step_30 would push out the good step_20 the run restarted from; the save
    that reaches their step replaces them.
    """
    tags = [t for t in complete_tags(ckpt_dir) if step_of(t) <= current_step]
    keep = tags[-keep_last:]
    oldest_kept = step_of(keep[0]) if keep else 0
    for path in ckpt_dir.iterdir():
        match = TAG_PATTERN.match(path.name)
        if not match or path in keep or int(match.group(1)) > current_step:
            continue
        if (path / MARKER).is_file() or int(match.group(1)) < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(engine, tag_dir: Path, rank: int, world_size: int, say=None) -> dict:
    """Load weights/optimizer/scheduler into `engine` and this rank's RNG; returns the client state.

    Every file DeepSpeed opens is loaded weights-only (`engine.training.safe_load`). A rank without
    an RNG file is an error when the checkpoint was saved by as many ranks as now (the file was
    lost); on another world size it is expected, and the rank keeps its fresh seeding, said once.
    """
    from engine.training.safe_load import use_safe_checkpoint_engine, weights_only_loads

    use_safe_checkpoint_engine(engine)
    with weights_only_loads():
        path, client_state = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name,
                                                    load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise CheckpointError(f"{tag_dir}: DeepSpeed could not load this checkpoint")
    client_state = client_state or {}
    if not load_rng(tag_dir, rank):
        saved_by = client_state.get("world_size")
        if saved_by == world_size:
            raise CheckpointError(f"{tag_dir / 'rng' / f'rank_{rank}.safetensors'}: missing, although the "
                                  f"checkpoint was saved by {saved_by} ranks as this run has")
        if rank == 0:
            (say or print)(f"note: {tag_dir} was saved by {saved_by} ranks, this run has {world_size}: "
                           f"ranks without a saved RNG state keep their fresh seeding")
    return client_state
