"""Resuming on another number of ranks: keep the global batch, and bring the ZeRO state across.

An allocation after a preemption often has another GPU count. The data side needs nothing here:
the sampler's position is global and masks are keyed by row position (`engine.curriculum.stream`).
Two things do change with the world size:
- the global batch must stay `micro × grad_accum × ranks`: accumulation is recomputed for the new
  number of ranks (micro kept), and a global batch that cannot be split evenly is refused;
- ZeRO 1-3 partition the optimizer state (stage 3 the weights too) per rank, and DeepSpeed refuses
  to load a checkpoint written by another number of ranks. Rank 0 converts the tag once into
  DeepSpeed's universal checkpoint (`deepspeed.checkpoint.ds_to_universal`: one fp32 file per
  parameter and optimizer moment), every rank loads its new partition from it with
  `checkpoint.load_universal`, and the converted copy is deleted. Stage 0 keeps the whole state in
  one file and loads as is. The conversion reads the tag with `torch.load(weights_only=False)`, so it
  runs only on a tag whose checksums `find_resume` verified, after every file opened weights-only,
  and under `weights_only_loads()` (which its worker processes inherit through the environment).
  DeepSpeed 0.19's ZeRO-3 universal load (`load_hp_checkpoint_state_from_checkpoint_dir_stage3`)
  leaves two faults that `repair_universal_load` undoes, so the resumed run matches one that was
  never stopped: it stores one and the same `step` tensor in the state of every param group, and
  AdamW increments its `step` in place, so each optimizer step then counted once per group (5 -> 6
  -> 8 with two groups) and the bias correction went wrong from the second step after the resume;
  and it copies the first group's hyper-parameters onto every group, giving the no-decay group
  (biases, LayerNorm) the decay group's weight decay.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
from pathlib import Path
from types import SimpleNamespace

from engine.training.checkpoints import CheckpointError

UNIVERSAL = "universal"  # folder beside the tags; not a tag, so pruning and `--resume auto` never see it


def saved_world_size(run_state: dict) -> int:
    return int(run_state.get("derived", {}).get("world_size") or run_state.get("world_size") or 1)


def batch_for_world_size(batch, run_state: dict, world_size: int, where: Path):
    """(batch section for `world_size` with the checkpoint's global batch, log line or None).

    Raises CheckpointError (one line) when the global batch is not a multiple of micro × ranks.
    """
    old_ranks = saved_world_size(run_state)
    if old_ranks == world_size:
        return batch, None
    saved = run_state["config"]["batch"]
    global_batch = int(saved["micro"]) * int(saved["grad_accum"]) * old_ranks
    per_step = batch.micro * world_size
    if global_batch % per_step:
        divisors = [m for m in range(1, global_batch // world_size + 1) if (global_batch // world_size) % m == 0] \
            if global_batch % world_size == 0 else []
        hint = (f"; pass --batch.micro=M with M one of {divisors}" if divisors
                else f"; {global_batch} sequences cannot be split over {world_size} ranks")
        raise CheckpointError(f"{where}: global batch {global_batch} (micro {saved['micro']} × grad_accum "
                              f"{saved['grad_accum']} × {old_ranks} ranks) cannot be kept on {world_size} ranks "
                              f"with micro {batch.micro}{hint}")
    grad_accum = global_batch // per_step
    changed = dataclasses.replace(batch, grad_accum=grad_accum,
                                  global_batch=global_batch if batch.global_batch is not None else None)
    line = (f"world size {old_ranks} -> {world_size}: grad_accum {saved['grad_accum']} -> {grad_accum} "
            f"(micro {batch.micro}) keeps the global batch of {global_batch}")
    return changed, line


def needs_universal(run_state: dict, world_size: int, zero_stage: int) -> bool:
    return zero_stage >= 1 and saved_world_size(run_state) != world_size


def convert_to_universal(tag_dir: Path) -> Path:
    """Write the universal form of `tag_dir` to `<checkpoints>/universal/<tag>` (replacing any
    earlier attempt); returns that folder."""
    from deepspeed.checkpoint import ds_to_universal

    from engine.training.safe_load import check_files_load_safely, weights_only_loads

    check_files_load_safely(tag_dir)  # a refusal names the file before DeepSpeed opens it
    out = tag_dir.parent / UNIVERSAL / tag_dir.name
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    args = SimpleNamespace(input_folder=str(tag_dir), output_folder=str(out), num_extract_workers=1,
                           num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    try:
        with weights_only_loads(), contextlib.redirect_stdout(io.StringIO()):  # it prints every step and fragment
            ds_to_universal.main(args)
    except Exception as exc:
        shutil.rmtree(out.parent, ignore_errors=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{tag_dir}: cannot convert to a universal checkpoint for the new world size "
                              f"({type(exc).__name__}: {reason})") from None
    return out


def remove_universal(tag_dir: Path) -> None:
    shutil.rmtree(tag_dir.parent / UNIVERSAL, ignore_errors=True)


def shared_universal(tag_dir: Path, rank: int) -> Path:
    """Collective: rank 0 converts `tag_dir`, every rank gets the folder to load, or every rank
    raises the same CheckpointError (a failure on rank 0 alone would leave the others waiting)."""
    import torch
    import torch.distributed as dist

    failure = None
    if rank == 0:
        try:
            convert_to_universal(tag_dir)
        except CheckpointError as exc:
            failure = exc
    flag = torch.tensor([0 if failure is None else 1])
    dist.broadcast(flag, src=0)
    if failure is not None:
        raise failure
    if int(flag):
        raise CheckpointError(f"{tag_dir}: rank 0 could not convert it for the new world size (see its log)")
    return tag_dir.parent / UNIVERSAL / tag_dir.name


def repair_universal_load(optimizer, universal_dir: Path) -> None:
    """After a universal load into the wrapped torch `optimizer`: give every param's state its own
    `step` tensor, and every param group its own saved hyper-parameters (weight decay, lr, betas,
    ...) from `zero/optimizer_state.pt`, as a load on the same number of ranks does. A no-op where
    DeepSpeed already did both (ZeRO 1-2)."""
    import torch

    from engine.training.safe_load import load_weights_only

    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
    path = universal_dir / "zero" / "optimizer_state.pt"
    saved = load_weights_only(path, map_location="cpu").get("param_groups")
    groups = optimizer.param_groups
    if not isinstance(saved, list) or len(saved) != len(groups):
        raise CheckpointError(f"{path}: {len(saved) if isinstance(saved, list) else 'no'} saved param groups, "
                              f"the optimizer has {len(groups)}")
    for group, settings in zip(groups, saved):
        group.update({key: value for key, value in settings.items() if key != "params"})


def drop_universal(tag_dir: Path, rank: int) -> None:
    """Collective: once every rank has loaded, rank 0 deletes the converted copy."""
    import torch.distributed as dist

    dist.barrier()
    if rank == 0:
        remove_universal(tag_dir)
