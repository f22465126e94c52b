"""Everything decided before step 1: processes, the model, the data stream, the DeepSpeed dict.

`prepare_run` checks the whole run (config, shards vs model, checkpoint vs model, ZeRO vs world
size) and raises `ConfigError`/`CheckpointError` before any file is written, so a bad input costs
nothing and leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.bert.config import BertConfig, from_hf_config, preset
from engine.config import ConfigError, to_dict
from engine.training import checkpoints, elastic
from engine.training.config import PretrainConfig
from engine.training.ds_config import complete_ds_config, read_ds_config
from engine.training.evaluation import ValidationSet
from engine.training.jit_lock import clear_stale_locks


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    rank: int  # global rank
    world_size: int  # data-parallel ranks
    local_rank: int  # rank on this node (selects the GPU)
    device: torch.device  # cuda:<local_rank> or cpu


@dataclass
class RunPlan:
    """The checked pieces of a run, built by `prepare_run`."""

    config: PretrainConfig
    dist: Dist
    model_config: BertConfig
    model: torch.nn.Module  # initial weights (fresh, or from model.init_from)
    stream: object  # engine.curriculum.TrainingStream for this rank
    ds_config: dict  # completed DeepSpeed dict
    resume_from: Path | None  # complete checkpoint tag folder to load, if resuming (by the Trainer)
    resume_state: dict | None  # its run_state.json, already checked against the model
    validation: object | None  # engine.training.evaluation.ValidationSet, None when eval.interval = 0
    world_size_change: str | None = None  # log line when resuming on another number of ranks
    schedule_change: str | None = None  # log line when the resumed run's steps/seed/curriculum/optim differ
    load_universal: bool = False  # ZeRO state must go through a universal checkpoint (world size changed)


_RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")
_ENV_WE_SET: set[str] = set()  # the rendezvous variables this process set itself (not its launcher)


def free_port() -> int:
    """A TCP port free on this host now, for a rendezvous on 127.0.0.1 (one process, or a local launcher)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dist_from_env() -> Dist:
    """Rank and world size as the launcher (deepspeed, torchrun, srun wrapper, mpirun) set them; one
    process when unset. Read before joining the process group, so config errors surface before any rendezvous."""
    from engine.cluster.ranks import launcher_ranks

    try:
        ranks = launcher_ranks()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    device = torch.device("cuda", ranks.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return Dist(rank=ranks.rank, world_size=ranks.world_size, local_rank=ranks.local_rank, device=device)


def init_distributed(dist: Dist) -> None:
    """Join the process group of `dist` (gloo on the CPU accelerator, NCCL on CUDA)."""
    import deepspeed

    from engine.cluster.ranks import launcher_ranks, port_agreed_over_mpi

    if launcher_ranks().via_mpi and "MASTER_ADDR" not in os.environ:
        # mpirun / srun --mpi=pmix: DeepSpeed's MPI discovery (mpi4py) sets RANK, MASTER_ADDR, ...
        from deepspeed.comm.comm import mpi_discovery
        mpi_discovery(distributed_port=int(os.environ.get("MASTER_PORT") or port_agreed_over_mpi()), verbose=False)
    before = set(os.environ)
    if "MASTER_ADDR" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    for key, value in (("RANK", dist.rank), ("LOCAL_RANK", dist.local_rank), ("WORLD_SIZE", dist.world_size)):
        os.environ.setdefault(key, str(value))
    _ENV_WE_SET.update(key for key in _RENDEZVOUS_ENV if key in os.environ and key not in before)
    if dist.device.type == "cuda":
        torch.cuda.set_device(dist.device)
    # DeepSpeed JIT-builds its CPU collective here; a lock left by a killed build would hang it.
    clear_stale_locks(say=print if dist.rank == 0 else (lambda line: None))
    deepspeed.init_distributed(dist_backend=None if dist.device.type == "cuda" else "gloo",
                               auto_mpi_discovery=False, verbose=False)
    if torch.distributed.get_world_size() != dist.world_size:
        raise ConfigError(f"the process group has {torch.distributed.get_world_size()} ranks but WORLD_SIZE "
                          f"says {dist.world_size}")
    unlink_shared_memory_segment(dist)


SHM_SEGMENT_PREFIX = f"deepspeed_allreduce_buffer_{os.getuid()}_"  # DeepSpeed's shm.cpp: name_uid_addr_port_rank


def unlink_shared_memory_segment(dist: Dist) -> None:
    """Take the name of DeepSpeed's CPU collective segment off /dev/shm once every rank has mapped it.

    With all ranks on one host, DeepSpeed's CPU accelerator maps a 66 MiB /dev/shm segment per rank (for
    its inference all-reduce, which training never calls) and never unlinks it: each multi-rank CPU run
    left 132 MiB of RAM behind until reboot, 20 GiB after a day of tests, and the machine thrashed. Every
    rank maps every peer's segment inside `deepspeed.init_distributed`, so after a barrier the names can
    go; the mappings stay valid until exit, and a killed run leaks nothing either.
    """
    from deepspeed.comm import comm as ds_comm

    if dist.device.type != "cpu" or getattr(ds_comm.cdb, "shm_comm_op", None) is None:
        return
    torch.distributed.barrier()
    name = (f"{SHM_SEGMENT_PREFIX}{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_"
            f"{torch.distributed.get_rank()}")
    Path("/dev/shm", name).unlink(missing_ok=True)


def shutdown_distributed() -> None:
    """Leave the process group (on every exit path, so launchers do not wait on a half-closed job), and
    take back the rendezvous variables `init_distributed` set: left behind, an in-process run (tests,
    notebooks, benchmarks) would hand its MASTER_PORT to every process started after it, whose
    rendezvous then fails with EADDRINUSE while this process still holds the port."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's cached groups, so a later run can join anew
    for key in _ENV_WE_SET:
        os.environ.pop(key, None)
    _ENV_WE_SET.clear()


def model_config_for(config: PretrainConfig, shards_vocab_size: int) -> BertConfig:
    """The architecture: an HF folder's config.json (init_from) or a preset, then the fields set in
    [model]. The vocabulary size follows the shards (or the init folder) unless set explicitly; an
    explicit size that disagrees with the shards is refused by `check_shards_fit_model`."""
    section = config.model
    fields = section.architecture_fields()
    if section.init_from is not None:
        path = Path(section.init_from) / "config.json"
        if not path.is_file():
            raise ConfigError(f"model.init_from: no config.json in {section.init_from}")
        try:
            hf_config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable: {exc}") from None
        return from_hf_config(hf_config, **fields)
    return preset(section.preset, **{"vocab_size": shards_vocab_size, **fields})


class _StdoutHandler(logging.StreamHandler):
    """Writes to `sys.stdout` as it is at each record (a run in-process, e.g. under a test or a
    benchmark, may swap it after the handler was added)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def configure_kernels(backend: str, device: torch.device, rank: int) -> str:
    """Set the kernel dispatch backend from `[model] kernels`, unless BIOPTIMUS_KERNELS is set
    (an experiment switch that wins), and show dispatch's once-per-op choices on rank 0: nothing
    else configures logging, so without this handler they would be dropped. "fused" on a device
    where Triton cannot run is refused here, before anything is written. Returns the backend."""
    from kernels import dispatch
    from kernels.triton_support import triton_runs_on, why_not_triton

    backend = os.environ.get("BIOPTIMUS_KERNELS") or backend
    if backend not in dispatch.BACKENDS:
        raise ConfigError(f"BIOPTIMUS_KERNELS: {backend!r} is not one of {list(dispatch.BACKENDS)}")
    probe = torch.empty(0, device=device)
    if backend == "fused" and not triton_runs_on(probe):
        raise ConfigError(f"model.kernels: 'fused' cannot run here: {why_not_triton(probe)}; use 'auto' or 'reference'")
    dispatch.set_backend(backend)
    log = logging.getLogger("kernels")
    if rank == 0 and not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return backend


def build_model(config: PretrainConfig, model_config: BertConfig):
    """Fresh weights (seeded identically on every rank) or the weights of an HF folder."""
    from engine.bert.hf_io import load_hf_folder
    from engine.bert.modeling import BertForMaskedLM

    torch.manual_seed(config.seed)
    if config.model.init_from is not None:
        model, _ = load_hf_folder(config.model.init_from, **config.model.architecture_fields())
    else:
        model = BertForMaskedLM(model_config)
    if config.model.compile:
        compile_layers(model)
    return model


def compile_layers(model) -> None:
    """torch.compile every transformer layer in place (`Module.compile`: parameter names unchanged).

    Per layer, not the whole model: the input checks and the packed layout need host syncs (graph
    breaks), while a layer is one clean graph where inductor fuses bias + GELU and dropout +
    residual + LayerNorm, the memory-bound work that keeps eager BERT far from the matmul peak.
    Shapes are dynamic because packed batches change the token count every step.
    """
    for layer in model.bert.encoder.layer:
        layer.compile(dynamic=True)


def check_shards_fit_model(model_config: BertConfig, stream) -> None:
    """Token ids and positions of the shards must be ones the model has rows for."""
    for seq_len, shards in sorted(stream.shard_sets.items()):
        where = getattr(shards, "root", "data.shards")
        if shards.vocab_size != model_config.vocab_size:
            raise ConfigError(f"{where}: shards have a vocabulary of {shards.vocab_size} but the model has "
                              f"model.vocab_size={model_config.vocab_size}")
        if seq_len > model_config.max_position_embeddings:
            raise ConfigError(f"{where}: shards of seq_len {seq_len} exceed the model's "
                              f"max_position_embeddings={model_config.max_position_embeddings}")


def check_checkpoint_fits(tag_dir: Path, state: dict, model_config: BertConfig) -> None:
    """A checkpoint of another architecture fails here, naming the first differing fields."""
    saved = state.get("model", {})
    current = dataclasses.asdict(model_config)
    shape_fields = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "pad_vocab_to_multiple")
    differ = [f"{k} {saved.get(k)} vs {current[k]}" for k in shape_fields if saved.get(k) != current[k]]
    if differ:
        raise checkpoints.CheckpointError(f"{tag_dir}: checkpoint is from a different model shape "
                                          f"(checkpoint vs run: {', '.join(differ)})")


def check_vocabulary_identity(config: PretrainConfig) -> None:
    """The init folder's vocabulary must be the shards' one, token for token: a shuffled vocabulary
    of the same size passes every size check and trains on rows meant for other tokens."""
    from engine.shards.vocab import VocabError, check_same_vocabulary

    if config.model.init_from is None:
        return
    try:
        check_same_vocabulary(("model.init_from", config.model.init_from), ("data.shards", config.data.shards))
    except VocabError as exc:
        raise ConfigError(str(exc)) from None


def check_checkpoint_vocabulary(tag_dir: Path, state: dict, config: PretrainConfig) -> None:
    """A checkpoint trained on one vocabulary is not continued on shards of another."""
    from engine.shards.vocab import vocabulary_sha256

    saved, current = state.get("vocab_sha256"), vocabulary_sha256(config.data.shards)
    if saved is not None and current is not None and saved != current:
        raise checkpoints.CheckpointError(f"{tag_dir}: trained on another vocabulary than data.shards "
                                          f"{config.data.shards} (sha256 {saved[:12]}… vs {current[:12]}…)")


def find_resume(config: PretrainConfig, resume: str | None, rank: int = 0) -> Path | None:
    """The verified tag folder to resume from: None (fresh), 'auto' (newest intact one, if any), or
    a path; damaged tags are passed over with one line each, never resumed from."""
    ckpt_dir = config.checkpoint_dir
    if resume in (None, "", "none"):
        if checkpoints.latest_complete(ckpt_dir) is not None:
            raise ConfigError(f"{ckpt_dir} already holds checkpoints; pass --resume auto to continue that run "
                              f"or choose another out_dir/checkpoint.dir")
        return None
    # Rank 0 alone names the damaged tags it skips; every rank verifies and reaches the same tag.
    say = None if rank == 0 else (lambda line: None)
    if resume == "auto":
        return checkpoints.newest_intact(ckpt_dir, say)
    return checkpoints.resolve_checkpoint(Path(resume), say)


def prepare_run(config: PretrainConfig, dist: Dist, resume: str | None) -> RunPlan:
    """Check everything and build the stream; raises before anything is written.

    The resume itself (data position, weights, RNG) is the Trainer's; here the checkpoint is only
    found and checked against the model."""
    from engine.curriculum.stream import open_training_stream

    if not Path(config.data.shards).is_dir():
        raise ConfigError(f"data.shards: no shard folder at {config.data.shards}")
    resume_from = find_resume(config, resume, dist.rank)
    resume_state = None
    world_size_change = schedule_change = None
    if resume_from is not None:
        resume_state = checkpoints.read_run_state(resume_from)
        schedule_change = describe_schedule_change(resume_state, config)
        batch, world_size_change = elastic.batch_for_world_size(config.batch, resume_state, dist.world_size,
                                                                resume_from)
        config = dataclasses.replace(config, batch=batch)
    stream = open_training_stream(
        config.data.shards, config.curriculum, total_steps=config.steps, seed=config.seed, rank=dist.rank,
        world_size=dist.world_size, micro_batch_size=config.batch.micro, grad_accum=config.batch.grad_accum,
        default_seq_len=config.seq_len, prefetch=config.data.prefetch)
    model_config = model_config_for(config, next(iter(stream.shard_sets.values())).vocab_size)
    check_shards_fit_model(model_config, stream)
    check_vocabulary_identity(config)
    raw = read_ds_config(config.deepspeed.config)
    ds = complete_ds_config(raw, config.deepspeed, config.batch, config.optim, dist.world_size,
                            on_cuda=dist.device.type == "cuda")
    if config.model.compile and ds.get("zero_optimization", {}).get("stage", 0) == 3:
        raise ConfigError("model.compile: not supported with ZeRO stage 3 (its parameter hooks break "
                          "the compiled graphs); use stage 0-2 or model.compile=false")
    load_universal = False
    if resume_from is not None:
        check_checkpoint_fits(resume_from, resume_state, model_config)
        check_checkpoint_vocabulary(resume_from, resume_state, config)
        load_universal = elastic.needs_universal(resume_state, dist.world_size,
                                                 ds.get("zero_optimization", {}).get("stage", 0))
        if load_universal:
            ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    validation = ValidationSet.open(config, stream, dist) if config.eval.interval else None
    configure_kernels(config.model.kernels, dist.device, dist.rank)
    model = build_model(config, model_config)
    return RunPlan(config=config, dist=dist, model_config=model_config, model=model, stream=stream, ds_config=ds,
                   resume_from=resume_from, resume_state=resume_state, validation=validation,
                   world_size_change=world_size_change, schedule_change=schedule_change,
                   load_universal=load_universal)


SCHEDULE_KEYS = ("steps", "seed", "curriculum", "optim")  # what lays out the data, masks and learning rate


def describe_schedule_change(resume_state: dict, config: PretrainConfig) -> str | None:
    """One line when the run resumes with other schedule-defining settings than it saved: raising `steps`
    to train longer is legitimate, but the curriculum's phase boundaries and the learning-rate schedule
    are then laid out over the new total, so the run is no longer the one that stopped; say so."""
    saved, now = resume_state.get("config", {}), to_dict(config)
    changes = [f"{key} {old} -> {new}" for key, old, new in _differences(
        {k: saved.get(k) for k in SCHEDULE_KEYS}, {k: now.get(k) for k in SCHEDULE_KEYS}) if old is not None]
    if not changes:
        return None
    return (f"resume from step {resume_state.get('step')}: {', '.join(changes)}; the curriculum phases and the "
            "learning-rate schedule follow the new values from here on (not the run that stopped)")


def _differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def describe_run(plan: RunPlan) -> dict:
    """The resolved config plus the derived numbers, printed at start and stored in checkpoints."""
    cfg, dist = plan.config, plan.dist
    phases = plan.stream.curriculum.phases
    derived = {
        "world_size": dist.world_size,
        "global_batch": cfg.batch.micro * cfg.batch.grad_accum * dist.world_size,
        "total_steps": plan.stream.total_steps,
        "tokens_per_step_nominal": [p.micro_batch_size * cfg.batch.grad_accum * dist.world_size * p.seq_len
                                    for p in phases],
        "phases": [p.describe() for p in phases],
        "device": str(dist.device),
    }
    if derived["global_batch"] != plan.ds_config["train_batch_size"]:
        raise ConfigError(f"global batch {derived['global_batch']} disagrees with the DeepSpeed config's "
                          f"train_batch_size {plan.ds_config['train_batch_size']}")
    return {"config": to_dict(cfg), "derived": derived, "model": dataclasses.asdict(plan.model_config),
            "deepspeed": plan.ds_config}
