# Cluster network settings, sourced by every slurm/*.sbatch before launching (edit for your site).
# Each line only sets a value that the environment does not already give, so a site module or a
# user's `export` wins.

# Threads per rank for CPU math (data preparation, CPU ranks); SLURM gives each task its CPUs.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# NCCL: fail fast instead of hanging on a lost peer; report the transport chosen at start-up.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# The interface for NCCL's bootstrap and socket transport (e.g. ib0, ens5); unset = NCCL picks one.
# export NCCL_SOCKET_IFNAME=ib0

# InfiniBand: which HCAs and GID index (RoCE usually needs 3); unset = NCCL's defaults.
# export NCCL_IB_HCA=mlx5_0,mlx5_1
# export NCCL_IB_GID_INDEX=3
# export NCCL_IB_DISABLE=0

# AWS EFA (p4d/p5): libfabric provider and GPU-direct RDMA through the aws-ofi-nccl plugin.
# export FI_PROVIDER=efa
# export FI_EFA_USE_DEVICE_RDMA=1
# export NCCL_PROTO=simple

# Gloo (CPU ranks) binds to the interface of MASTER_ADDR unless told otherwise.
# export GLOO_SOCKET_IFNAME=eth0
