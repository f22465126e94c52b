"""Pre-train a BERT with DeepSpeed on packed shards, following a masking curriculum.

    # one process (CPU or one GPU)
    python engine/pretrain.py --config configs/tiny_demo.toml
    # DeepSpeed launcher: 2 ranks (CPU accelerator + gloo when there is no GPU) or 8 GPUs
    deepspeed --num_gpus 2 engine/pretrain.py --config configs/tiny_demo.toml
    deepspeed --num_gpus 8 engine/pretrain.py --config configs/bert_base.toml --deepspeed.config=ds_configs/zero2_bf16.json
    # torchrun
    torchrun --nproc_per_node 2 engine/pretrain.py --config configs/tiny_demo.toml
    # override any field; continue from the newest complete checkpoint
    python engine/pretrain.py --config configs/tiny_demo.toml --optim.lr=5e-4 --resume auto
    # SLURM (one task per GPU, requeued on preemption) and MPI: see slurm/pretrain.sbatch, docs/cluster.md
    mpirun -n 2 python engine/pretrain.py --config configs/tiny_demo.toml
    # check config, shards, checkpoint and (inside a SLURM job) the allocation; train nothing
    python engine/pretrain.py --config configs/tiny_demo.toml --resume auto --dry-run

SIGUSR1 or SIGTERM (preemption, `sbatch --signal=USR1@120`) makes every rank finish the current
optimizer step, write a complete checkpoint and exit with status 75, on which the sbatch script
requeues the job; `--resume auto` continues it.

The model's vocabulary size follows the shards (or model.init_from's folder); every model field is
settable as `--model.<field>=value` (`--model.overrides={...}` still works). The resolved config is
printed at start, written to <out_dir>/resolved_config.json and stored in every checkpoint.

Bad input (unknown key, shards that do not fit the model, a checkpoint of another model shape, a
ZeRO config that does not fit the world size) stops with one `error:` line before anything is written.
"""
from __future__ import annotations

import sys

from engine.cli import Flag, exit_without_finalizing, parse_command
from engine.config import ConfigError

FLAGS = [
    Flag("--resume", "resume", extra=True,
         help="'auto' = newest complete checkpoint of this run (fresh start if none), or a checkpoint path"),
    Flag("--dry-run", "dry_run", value=True, extra=True,
         help="check config, shards, checkpoint and the SLURM allocation, then exit without training"),
    Flag("--local_rank", "local_rank", extra=True, help="set by the deepspeed launcher; ranks come from the environment"),
]


def parse_args(argv: list[str] | None) -> tuple:
    """(PretrainConfig, {"resume": ..., "local_rank": ...}); a bad option exits 2 with one line."""
    from engine.training.config import PretrainConfig
    return parse_command(PretrainConfig, argv, __doc__, FLAGS)


def main(argv: list[str] | None = None) -> int:
    config, extras = parse_args(argv)
    from engine.bert.hf_io import HFFolderError
    from engine.cluster.preemption import REQUEUE_EXIT_CODE, StopSignals
    from engine.shards import ShardError
    from engine.training.checkpoints import CheckpointError
    from engine.training.jit_lock import JitLockError
    from engine.training.metrics import MetricsFileError
    from engine.training.setup import dist_from_env, init_distributed, prepare_run, shutdown_distributed
    from engine.training.trainer import Trainer

    bad_input = (ConfigError, CheckpointError, ShardError, HFFolderError, MetricsFileError, JitLockError)
    stop = StopSignals()  # from the start: a preemption during set-up must not kill the job unsaved
    try:
        if extras.get("dry_run"):
            from engine.training.preflight import dry_run
            print(dry_run(config, extras["resume"]))
            return 0
        dist = dist_from_env()
        plan = prepare_run(config, dist, extras["resume"])
    except bad_input as exc:
        sys.exit(f"error: {exc}")
    trainer = None
    try:
        init_distributed(dist)
        trainer = Trainer(plan)
        stop.bind(trainer.request_stop)
        trainer.train()
    except bad_input as exc:
        sys.exit(f"error: {exc}")
    finally:
        if trainer is not None:
            trainer.close()
        plan.stream.close()  # the stream's one close: prepare_run opened it
        shutdown_distributed()
    if trainer.stopped_early:
        print(f"stopped by {stop.first or 'a signal to another rank'} after step {trainer.state.step}; checkpoint "
              f"complete, exit {REQUEUE_EXIT_CODE} (slurm/pretrain.sbatch requeues on it)", file=sys.stderr, flush=True)
        return REQUEUE_EXIT_CODE
    return 0


if __name__ == "__main__":
    exit_without_finalizing(main)
