"""The SLURM allocation a job runs in, and whether it fits the run (checked before any launch).

`pretrain.py --dry-run` plans the run for the allocation's world size from the batch script, one
process, so a missing file, a global batch that needs another rank count or tasks without a GPU
fail with one line before `srun` starts anything.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from engine.config import ConfigError


@dataclass(frozen=True)
class Allocation:
    nodes: int
    tasks: int  # data-parallel ranks the job will launch
    tasks_per_node: list[int]  # per node, in node order
    gpus_per_node: int  # 0 on a CPU allocation
    partition: str

    def describe(self) -> str:
        gpus = f", {self.gpus_per_node} GPU(s) per node" if self.gpus_per_node else ", CPU only"
        return f"{self.tasks} task(s) on {self.nodes} node(s) of partition {self.partition}{gpus}"


def expand_tasks_per_node(value: str) -> list[int]:
    """SLURM_TASKS_PER_NODE, e.g. "2(x3),1" -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in value.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ConfigError(f"SLURM_TASKS_PER_NODE: cannot read {value!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def allocation_from_slurm(env: Mapping[str, str] | None = None) -> Allocation | None:
    """The allocation of the surrounding SLURM job; None outside one."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return None
    per_node = expand_tasks_per_node(env.get("SLURM_TASKS_PER_NODE", env.get("SLURM_NTASKS", "1")))
    gpus = env.get("SLURM_GPUS_ON_NODE", "0")
    return Allocation(nodes=int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1"))),
                      tasks=int(env.get("SLURM_NTASKS", str(sum(per_node)))), tasks_per_node=per_node,
                      gpus_per_node=int(gpus) if gpus.isdigit() else 0,
                      partition=env.get("SLURM_JOB_PARTITION", "?"))


def check_allocation(alloc: Allocation, on_cuda: bool) -> None:
    """One task per GPU: more tasks than GPUs on a node would share devices, fewer leave GPUs idle."""
    if sum(alloc.tasks_per_node) != alloc.tasks:
        raise ConfigError(f"allocation: SLURM_NTASKS={alloc.tasks} but the nodes hold "
                          f"{sum(alloc.tasks_per_node)} tasks ({alloc.tasks_per_node})")
    if not on_cuda:
        if alloc.gpus_per_node:
            raise ConfigError(f"allocation: {alloc.gpus_per_node} GPU(s) per node but torch sees no CUDA device "
                              f"on {os.uname().nodename}")
        return
    for node, tasks in enumerate(alloc.tasks_per_node):
        if tasks != alloc.gpus_per_node:
            raise ConfigError(f"allocation: node {node} runs {tasks} task(s) for {alloc.gpus_per_node} GPU(s); "
                              f"use one task per GPU (--ntasks-per-node={alloc.gpus_per_node})")
