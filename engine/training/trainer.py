"""The trainer: set up DeepSpeed and resume, then step, log, evaluate and checkpoint until done.

    plan = prepare_run(config, dist, resume)   # engine.training.setup: every check, nothing written
    init_distributed(dist)
    trainer = Trainer(plan)                    # DeepSpeed engine + the whole resume
    try:
        trainer.train()                        # `trainer.request_stop()` ends it at a step boundary
    finally:
        trainer.close(); plan.stream.close(); shutdown_distributed()

DeepSpeed owns weights, optimizer and lr-scheduler state; the trainer owns the client state
(`TrainState`: step and consumed tokens, plus the stream's data position and each rank's RNG
states, which live where they advance and are gathered into every checkpoint) and the metrics.
Host syncs (`.item()`, all-reduce of counters) happen only at log, eval and checkpoint time.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as torch_dist

from engine.bert.flops import training_flops
from engine.curriculum.masking import mask_seed
from engine.io import atomic_write_text
from engine.shards.vocab import vocabulary_sha256
from engine.training import checkpoints, elastic
from engine.training.ds_config import offloads_optimizer, precision_of
from engine.training.metrics import MetricsWriter, peak_flops, peak_memory_gib, throughput
from engine.training.optim import build_optimizer, build_scheduler, lr_multiplier
from engine.training.setup import RunPlan, describe_run

RESOLVED_CONFIG = "resolved_config.json"  # written into out_dir at start: the run as it was resolved


@dataclass
class TrainState:
    """What the trainer counts; a checkpoint stores it beside the data position and RNG states."""

    step: int = 0  # optimizer steps done
    consumed_tokens: int = 0  # non-pad tokens trained on by all ranks, as of the last sync


@dataclass
class _Interval:
    """Counters of the current logging interval (host numbers; the loss sums stay on the device)."""

    loss_sum: torch.Tensor  # sum over micro-batches of mean loss × masked tokens (this rank)
    correct_sum: torch.Tensor  # correctly predicted masked tokens (this rank)
    masked: int = 0  # this rank's predicted tokens
    tokens: int = 0  # this rank's non-pad tokens in the timed steps
    samples: int = 0  # this rank's sequences in the timed steps
    flops: float = 0.0  # this rank's model FLOPs in the timed steps
    started: float | None = None  # clock at the start of the timed part (None: the warm-up step runs)
    paused: float = 0.0  # seconds spent in evaluation/checkpointing inside the interval
    steps: int = 0  # timed steps
    data_wait: float = 0.0  # seconds this rank's loop blocked on the batch stream in the timed steps
    breakdown: dict = field(default_factory=dict)  # seconds per phase in the timed steps (wall_clock_breakdown)

    def reset(self, now: float) -> None:
        self.loss_sum.zero_()
        self.correct_sum.zero_()
        self.masked, self.tokens, self.samples, self.flops = 0, 0, 0, 0.0
        self.started, self.paused = now, 0.0
        self.steps, self.data_wait = 0, 0.0
        self.breakdown.clear()


RNG_STREAM = 1 << 20  # keeps the dropout seeds apart from mask_seed's (step, micro_step) seeds


def seed_step_rngs(seed: int, step: int, rank: int) -> None:
    """Seed every RNG (dropout included) from (seed, step, rank) at the start of each optimizer step.

    Nothing random is carried from one step to the next, so a resumed run, or a rank that did not
    exist before the restart, draws what the uninterrupted run would have drawn at that step; the
    saved RNG states are not needed.
    """
    value = mask_seed(seed, step, RNG_STREAM, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class Trainer:
    """One run of `plan` on this rank; see the module docstring."""

    def __init__(self, plan: RunPlan):
        self.plan, self.cfg, self.dist, self.stream = plan, plan.config, plan.dist, plan.stream
        self.description = describe_run(plan)
        self.total_steps = self.stream.total_steps
        self.state = TrainState()
        self.last_metrics: dict = {}
        self.stopped_early = False  # train() ended at a stop request, not at the last step
        self._stop_requested = False
        self.writer = self.bar = None
        self.setup()

    # -- set-up: DeepSpeed, resume, outputs ----------------------------------------------------
    def setup(self) -> None:
        """The DeepSpeed engine, then the whole resume (data position, weights, RNG), then the outputs.

        Nothing is written before the resume has succeeded, so a checkpoint that does not fit
        leaves the run folder as it was."""
        import deepspeed

        on_cuda = self.dist.device.type == "cuda"
        model = self.plan.model.to(self.dist.device)  # before the optimizer: fused AdamW wants its params on the GPU
        optimizer = build_optimizer(model, self.cfg.optim, offload=offloads_optimizer(self.plan.ds_config),
                                    on_cuda=on_cuda)
        scheduler = build_scheduler(optimizer, self.cfg.optim, self.total_steps)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.plan.ds_config, dist_init_required=False)
        if self.plan.resume_from is not None:
            self.resume()
        # A CPU group for the stop flag, so agreeing on it never waits for the GPU's queue.
        self._flag_group = torch_dist.new_group(backend="gloo") if on_cuda and self.dist.world_size > 1 else None
        self._reports_norm = hasattr(self.engine.optimizer, "_global_grad_norm")  # ZeRO/mixed-precision wrappers
        self._own_norm = None
        self._unsynced_tokens = 0  # this rank's tokens not yet in state.consumed_tokens
        self._peak = peak_flops(torch.cuda.get_device_name(self.dist.device), precision_of(self.plan.ds_config)) \
            if on_cuda else None
        self.interval = _Interval(torch.zeros((), dtype=torch.float64, device=self.engine.device),
                                  torch.zeros((), dtype=torch.float64, device=self.engine.device))
        self._open_outputs()

    def resume(self) -> None:
        """Data position first (cheap, checked), then weights, optimizer, scheduler and RNG states."""
        tag_dir, saved = self.plan.resume_from, self.plan.resume_state
        try:
            self.stream.load_state_dict(saved["data"])
        except (KeyError, ValueError) as exc:
            raise checkpoints.CheckpointError(f"{tag_dir}: data position does not fit this run: {exc}") from None
        # Another number of ranks under ZeRO 1-3: load through a universal checkpoint (engine.training.elastic).
        rank = self.dist.rank
        load_from = elastic.shared_universal(tag_dir, rank) if self.plan.load_universal else tag_dir
        client = checkpoints.load_checkpoint(self.engine, load_from, rank, self.dist.world_size)
        if self.plan.load_universal:
            elastic.repair_universal_load(self.engine.optimizer.optimizer, load_from)
            elastic.drop_universal(tag_dir, rank)
        self.state = TrainState(step=int(client["step"]), consumed_tokens=int(client["consumed_tokens"]))
        if self.state.step != self.stream.step:
            raise checkpoints.CheckpointError(f"{tag_dir}: DeepSpeed state is at step {self.state.step} but "
                                              f"the data position at {self.stream.step}")

    def _open_outputs(self) -> None:
        """Metrics sinks, progress bar, the resolved config on the console and in out_dir (rank 0)."""
        cfg, rank = self.cfg, self.dist.rank
        resumed = self.plan.resume_from is not None
        self.writer = MetricsWriter(cfg.out_dir, enabled=rank == 0, jsonl=cfg.logging.jsonl,
                                    tensorboard=cfg.logging.tensorboard,
                                    resume_step=self.state.step if resumed else None)
        if rank != 0:
            return
        if cfg.logging.progress_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total_steps, initial=self.state.step, unit="step", dynamic_ncols=True)
        text = json.dumps(self.description, indent=1, default=str)
        atomic_write_text(cfg.out_dir / RESOLVED_CONFIG, text + "\n")
        self.echo("resolved run config:\n" + text)
        self.echo(f"global batch {self.description['derived']['global_batch']} = micro {cfg.batch.micro} × "
                  f"grad_accum {cfg.batch.grad_accum} × {self.dist.world_size} ranks; {self.total_steps} steps; "
                  f"precision {precision_of(self.plan.ds_config)}")
        if resumed:
            self.echo(f"resumed from {self.plan.resume_from} at step {self.state.step}")
        if self.plan.world_size_change is not None:
            self.echo(self.plan.world_size_change)
        if self.plan.schedule_change is not None:
            self.echo(self.plan.schedule_change)

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run (or continue) to the last step, or to a requested stop; returns the last train metrics."""
        cfg = self.cfg
        if cfg.eval.at_start and self.state.step == 0 and self.plan.validation is not None:
            self.evaluate()
        while self.state.step < self.total_steps:
            phase = self.train_step()
            if self._due(cfg.logging.interval):
                self.log(phase)
            if self.plan.validation is not None and self._due(cfg.eval.interval):
                self.evaluate()
            if self._due(cfg.checkpoint.interval):
                self.checkpoint()
            # The one place a stop request is honoured: between optimizer steps, after a checkpoint.
            if self._stop_agreed():
                if not self._due(cfg.checkpoint.interval):
                    self.checkpoint()
                self.stopped_early = True
                self.echo(f"stopped on request after step {self.state.step}")
                break
        return self.last_metrics

    def request_stop(self) -> None:
        """Ask the loop to checkpoint and return at the next optimizer-step boundary.

        Only sets a flag, so a signal handler may call it; every rank stops at the same step once
        any rank has asked."""
        self._stop_requested = True

    def train_step(self):
        """One optimizer step: `grad_accum` micro-steps; returns the phase of the last micro-batch."""
        self.engine.train()
        seed_step_rngs(self.cfg.seed, self.state.step, self.dist.rank)
        log_next = self._due(self.cfg.logging.interval, self.state.step + 1)
        tokens = samples = 0
        flops = 0.0
        data_wait = 0.0
        for _ in range(self.cfg.batch.grad_accum):
            waited_from = time.perf_counter()
            item = self.stream.next_micro_batch()
            data_wait += time.perf_counter() - waited_from
            if item.phase.changed:
                self.echo(f"curriculum: {item.phase.describe}")
                self.writer.write("phase", self.state.step, {"phase": item.phase.index, "name": item.phase.name,
                                                             "unit": item.phase.unit, "rate": item.phase.rate,
                                                             "seq_len": item.phase.seq_len}, console=False)
            micro_tokens, micro_flops = self.micro_step(item, log_next)
            tokens += micro_tokens
            samples += item.batch.input_ids.shape[0]
            flops += micro_flops
        self.state.step += 1
        self._unsynced_tokens += tokens
        if self.interval.started is None:  # the first step after (re)start is warm-up: not timed
            self._synchronize()
            self.interval.started = time.perf_counter()
            self.interval.breakdown.clear()
        else:
            self.interval.steps += 1
            self.interval.data_wait += data_wait
            self.interval.tokens += tokens
            self.interval.samples += samples
            self.interval.flops += flops
        if self.bar is not None:
            self.bar.update(1)
        return item.phase

    def micro_step(self, item, log_next: bool) -> tuple[int, float]:
        """Forward and backward of one micro-batch (DeepSpeed steps the optimizer on the step's last
        one); returns its non-pad tokens and model FLOPs."""
        batch, engine = item.batch, self.engine
        tokens = int((batch.segment_ids != 0).sum())
        masked = int((batch.labels != -100).sum())
        out = engine(input_ids=batch.input_ids.to(engine.device, non_blocking=True),
                     segment_ids=batch.segment_ids.to(engine.device, non_blocking=True),
                     labels=batch.labels.to(engine.device, non_blocking=True))
        engine.backward(out.loss)
        if log_next and not self._reports_norm and engine.is_gradient_accumulation_boundary():
            self._own_norm = _grad_norm_now(engine)
        engine.step()
        if engine.wall_clock_breakdown():
            _add_breakdown(engine, self.interval.breakdown)
        self.interval.loss_sum += out.loss.detach().double() * masked
        self.interval.correct_sum += out.num_correct.detach().double()
        self.interval.masked += masked
        return tokens, training_flops(self.plan.model_config, item.phase.seq_len, tokens, masked)

    def log(self, phase) -> None:
        """Train metrics of the interval, summed over ranks: the only place the loop waits for the device."""
        step, iv = self.state.step, self.interval
        grad_norm = _as_float(self.engine.get_global_grad_norm() if self._reports_norm else self._own_norm)
        self._synchronize()
        now = time.perf_counter()
        self._sync_consumed_tokens()
        loss, correct, masked, tokens, samples, flops = _all_reduce_sum(
            [iv.loss_sum.item(), iv.correct_sum.item(), iv.masked, iv.tokens, iv.samples, iv.flops], self.engine.device)
        values = {"loss": loss / max(masked, 1), "mlm_accuracy": correct / max(masked, 1),
                  "lr": self.cfg.optim.lr * lr_multiplier(step - 1, self.cfg.optim, self.total_steps),
                  "grad_norm": grad_norm, "phase": phase.index, "mask_rate": phase.rate,
                  "consumed_tokens": self.state.consumed_tokens}
        if tokens > 0:
            seconds = now - iv.started - iv.paused
            values.update(throughput(tokens, samples, seconds, flops / max(tokens, 1), self.dist.world_size, self._peak))
            # Share of the time this rank waited for batches (reading, masking) on this hardware; the
            # slowest rank's share is the one that holds the others back.
            values["data_wait_share"] = _all_reduce_max(iv.data_wait / max(seconds, 1e-9), self.engine.device)
            if iv.breakdown and iv.steps:
                values.update({f"step_{key}_s": sec / iv.steps for key, sec in iv.breakdown.items()})
                values["step_data_wait_s"] = iv.data_wait / iv.steps
        values["peak_memory_gib"] = peak_memory_gib()
        values["peak_memory_gib_max_rank"] = _all_reduce_max(values["peak_memory_gib"], self.engine.device)
        self.writer.write("train", step, values, echo=self.echo)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
        self.last_metrics = values
        iv.reset(now)

    def evaluate(self) -> None:
        """Validation MLM loss on the held-out split (not counted in throughput)."""
        began = time.perf_counter()
        self.writer.write("valid", self.state.step, self.plan.validation.evaluate(self.engine), echo=self.echo)
        self.interval.paused += time.perf_counter() - began

    def checkpoint(self):
        """A complete checkpoint of this step (see engine.training.checkpoints); collective."""
        began = time.perf_counter()
        self._sync_consumed_tokens()
        data = self.stream.state_dict()
        description = self.description
        client_state = {"step": self.state.step, "consumed_tokens": self.state.consumed_tokens, "data": data,
                        "config": description["config"], "model": description["model"],
                        "manifest_hash": data.get("manifest_hash"), "world_size": self.dist.world_size,
                        "vocab_sha256": vocabulary_sha256(self.cfg.data.shards)}
        run_state = {**client_state, "derived": description["derived"], "deepspeed": description["deepspeed"]}
        tag_dir = checkpoints.save_checkpoint(self.engine, self.cfg.checkpoint_dir, self.state.step, client_state,
                                              run_state, self.dist.rank, self.cfg.checkpoint.keep_last,
                                              torch_dist.barrier)
        self.interval.paused += time.perf_counter() - began
        return tag_dir

    def close(self) -> None:
        """Close the metric sinks (in `finally`); the stream is closed by whoever opened it."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    # -- small helpers -------------------------------------------------------------------------
    def echo(self, line: str) -> None:
        """Console lines from rank 0 only, printed above the progress bar when there is one."""
        if self.dist.rank != 0:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def _due(self, interval: int, step: int | None = None) -> bool:
        step = self.state.step if step is None else step
        return step % interval == 0 or step == self.total_steps

    def _sync_consumed_tokens(self) -> None:
        """The one place consumed_tokens grows: by every rank's tokens since the last sync."""
        self.state.consumed_tokens += int(_all_reduce_sum([self._unsynced_tokens], self.engine.device)[0])
        self._unsynced_tokens = 0

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop (all ranks must leave the loop at the same step)."""
        if self.dist.world_size == 1:
            return self._stop_requested
        device = torch.device("cpu") if self._flag_group is not None else self.engine.device
        flag = torch.tensor([float(self._stop_requested)], device=device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=self._flag_group)
        return bool(flag.item())

    def _synchronize(self) -> None:
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor)
    return tensor.tolist()


def _all_reduce_max(value: float, device: torch.device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
    return float(tensor.item())


def _add_breakdown(engine, totals: dict[str, float]) -> None:
    """Add the last micro-step's forward / backward / gradient reduction / optimizer seconds, as
    DeepSpeed's own timers measured them (only with `wall_clock_breakdown`, which syncs per phase)."""
    from deepspeed.runtime.engine import (BACKWARD_INNER_MICRO_TIMER, BACKWARD_REDUCE_MICRO_TIMER,
                                          FORWARD_MICRO_TIMER, STEP_MICRO_TIMER)

    timers = engine.get_wall_clock_timers()
    names = {"forward": FORWARD_MICRO_TIMER, "backward": BACKWARD_INNER_MICRO_TIMER,
             "communication": BACKWARD_REDUCE_MICRO_TIMER, "optimizer": STEP_MICRO_TIMER}
    for key, name in names.items():
        totals[key] = totals.get(key, 0.0) + timers.get(name, 0.0) / 1000.0


def _grad_norm_now(engine) -> torch.Tensor:
    """Global 2-norm of the (already all-reduced) gradients, for the plain stage-0 fp32 optimizer."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _as_float(norm) -> float | None:
    if norm is None:
        return None
    return float(norm.item() if isinstance(norm, torch.Tensor) else norm)
