"""Rank, world size and local rank from the environment of whatever launched this process.

Read before the process group exists, so a bad config fails before any rendezvous. The torch
names (RANK, WORLD_SIZE, LOCAL_RANK: deepspeed, torchrun, the srun wrapper) win; MPI launchers
set only their own names, and then the process group is joined through DeepSpeed's MPI discovery
(`mpi4py` broadcasts rank 0's address). SLURM_PROCID alone is not trusted: a batch script running
python directly also has it, with SLURM_NTASKS of the whole allocation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

# (rank, world size, local rank) names per launcher, most explicit first.
LAUNCHER_VARIABLES = (
    ("torch", ("RANK", "WORLD_SIZE", "LOCAL_RANK")),
    ("openmpi", ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")),
    ("pmix", ("PMIX_RANK", "SLURM_NTASKS", "SLURM_LOCALID")),  # srun --mpi=pmix
    ("pmi", ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID")),  # MPICH / Intel MPI hydra
)


@dataclass(frozen=True)
class LauncherRanks:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torch", "openmpi", "pmix", "pmi" or "single"

    @property
    def via_mpi(self) -> bool:
        return self.launcher in ("openmpi", "pmix", "pmi")


def launcher_ranks(env: Mapping[str, str] | None = None) -> LauncherRanks:
    """The first launcher whose rank variable is set; one process when none is."""
    env = os.environ if env is None else env
    for launcher, (rank_name, size_name, local_name) in LAUNCHER_VARIABLES:
        if rank_name not in env:
            continue
        try:
            rank = int(env[rank_name])
            world_size = int(env.get(size_name, "1"))
            local_rank = int(env.get(local_name, "0"))
        except ValueError:
            raise ValueError(f"launcher variables {rank_name}/{size_name}/{local_name} must be integers, got "
                             f"{env.get(rank_name)!r}/{env.get(size_name)!r}/{env.get(local_name)!r}") from None
        if not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(f"{rank_name}={rank} is not a rank of {size_name}={world_size}")
        return LauncherRanks(rank, world_size, local_rank, launcher)
    return LauncherRanks(0, 1, 0, "single")


def port_agreed_over_mpi() -> int:
    """A free TCP port chosen by MPI rank 0 and broadcast, for the rendezvous after MPI discovery
    (DeepSpeed's discovery shares rank 0's address but takes the port as given)."""
    import socket

    from mpi4py import MPI

    port = None
    if MPI.COMM_WORLD.Get_rank() == 0:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
    return MPI.COMM_WORLD.bcast(port, root=0)
