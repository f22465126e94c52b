"""Running on clusters: which launcher started this process, preemption signals, allocation checks.

`ranks.launcher_ranks` reads rank / world size / local rank from whatever started the process
(deepspeed, torchrun, the srun wrapper in `slurm/pretrain.sbatch`, Open MPI's `mpirun`, PMIx/PMI
from `srun --mpi=pmix`); `preemption.StopSignals` turns SIGUSR1/SIGTERM into a stop at the next
optimizer step that every rank agrees on; `allocation` checks a SLURM allocation against the run
before anything is launched.
"""
