"""`pretrain.py --dry-run`: plan the whole run for the world size it will have, train nothing.

Inside a SLURM job (the batch script calls it before `srun`) the world size is the allocation's
task count and the allocation itself is checked; outside, it is the launcher's (1 when none).
Every check of `prepare_run` runs (config, shards vs model, checkpoint vs model, ZeRO and global
batch vs world size); nothing is written.
"""
from __future__ import annotations

import torch

from engine.cluster.allocation import allocation_from_slurm, check_allocation
from engine.cluster.ranks import launcher_ranks


def dry_run(config, resume: str | None) -> str:
    """Raises ConfigError/CheckpointError/ShardError like a real start would; returns a summary line."""
    from engine.training.setup import Dist, prepare_run

    on_cuda = torch.cuda.is_available()
    alloc = allocation_from_slurm()
    if alloc is not None:
        check_allocation(alloc, on_cuda)
        world_size, where = alloc.tasks, alloc.describe()
    else:
        world_size = launcher_ranks().world_size
        where = f"{world_size} rank(s), no SLURM allocation"
    device = torch.device("cuda", 0) if on_cuda else torch.device("cpu")
    plan = prepare_run(config, Dist(rank=0, world_size=world_size, local_rank=0, device=device), resume)
    plan.stream.close()
    start = f"resume from {plan.resume_from}" if plan.resume_from is not None else "fresh start"
    return (f"dry run ok: {where}; global batch {plan.ds_config['train_batch_size']}; "
            f"ZeRO {plan.ds_config.get('zero_optimization', {}).get('stage', 0)}; "
            f"{plan.stream.total_steps} steps; shards {config.data.shards}; {start}")
