"""engine.cluster without a cluster: launcher rank variables, SLURM allocation checks, stop signals."""
from __future__ import annotations

import os
import signal

import pytest

from engine.cluster.allocation import Allocation, allocation_from_slurm, check_allocation, expand_tasks_per_node
from engine.cluster.preemption import REQUEUE_EXIT_CODE, StopSignals
from engine.cluster.ranks import launcher_ranks
from engine.config import ConfigError


def test_torch_variables_win_over_mpi_ones():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}
    ranks = launcher_ranks(env)
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.launcher) == (3, 4, 1, "torch")
    assert not ranks.via_mpi


@pytest.mark.parametrize("env, expected", [
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, (1, 2, 1, "openmpi")),
    ({"PMIX_RANK": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_PROCID": "5"}, (5, 8, 1, "pmix")),
    ({"PMI_RANK": "2", "PMI_SIZE": "3"}, (2, 3, 0, "pmi")),
])
def test_mpi_launchers_are_read_from_their_own_variables(env, expected):
    ranks = launcher_ranks(env)
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.launcher) == expected
    assert ranks.via_mpi


def test_a_batch_script_alone_is_one_process_not_its_whole_allocation():
    # The batch step has SLURM_PROCID=0 and SLURM_NTASKS of the allocation; python run there is one process.
    ranks = launcher_ranks({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "7"})
    assert (ranks.rank, ranks.world_size, ranks.launcher) == (0, 1, "single")


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_impossible_rank_variables_are_refused(env):
    with pytest.raises(ValueError, match="RANK"):
        launcher_ranks(env)


def test_tasks_per_node_expands_slurm_compression():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("8") == [8]
    with pytest.raises(ConfigError, match="SLURM_TASKS_PER_NODE"):
        expand_tasks_per_node("2(y3)")


def test_allocation_is_read_from_the_job_environment():
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16", "SLURM_TASKS_PER_NODE": "8(x2)",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_PARTITION": "gpu"}
    alloc = allocation_from_slurm(env)
    assert alloc == Allocation(nodes=2, tasks=16, tasks_per_node=[8, 8], gpus_per_node=8, partition="gpu")
    check_allocation(alloc, on_cuda=True)
    assert allocation_from_slurm({}) is None


@pytest.mark.parametrize("alloc, on_cuda, match", [
    (Allocation(1, 4, [4], 8, "gpu"), True, "node 0 runs 4 task.s. for 8 GPU"),
    (Allocation(1, 8, [8], 4, "gpu"), True, "node 0 runs 8 task.s. for 4 GPU"),
    (Allocation(1, 2, [2], 2, "gpu"), False, "torch sees no CUDA device"),
    (Allocation(2, 3, [2, 2], 0, "cpu"), False, "SLURM_NTASKS=3"),
])
def test_allocations_that_do_not_fit_one_task_per_gpu_are_refused(alloc, on_cuda, match):
    with pytest.raises(ConfigError, match=match):
        check_allocation(alloc, on_cuda)


@pytest.fixture
def keep_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_signals_only_request_a_stop_and_a_second_one_is_harmless(keep_handlers):
    calls = []
    stop = StopSignals()
    os.kill(os.getpid(), signal.SIGUSR1)  # before the trainer exists: kept
    assert stop.first == "SIGUSR1"
    stop.bind(lambda: calls.append(1))
    assert calls == [1]
    os.kill(os.getpid(), signal.SIGTERM)  # e.g. during the checkpoint: the process lives on
    assert calls == [1, 1] and stop.received == ["SIGUSR1", "SIGTERM"]
    assert REQUEUE_EXIT_CODE == 75
