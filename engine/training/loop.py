"""The training loop: schedule, micro-steps, step, log, evaluate, checkpoint.

DeepSpeed owns weights, optimizer and lr-scheduler state; this loop owns the client state (step,
consumed tokens, data position, RNG states, resolved config) and the metrics. Host syncs (`.item()`,
all-reduce of counters) happen only at log and eval time.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist

from engine.bert.flops import training_flops
from engine.training import checkpoints
from engine.training.ds_config import offloads_optimizer, precision_of
from engine.training.metrics import MetricsWriter, peak_flops, peak_memory_gib, throughput
from engine.training.optim import build_optimizer, build_scheduler, lr_multiplier
from engine.training.setup import RunPlan, describe_run, seed_rank_rngs


def _echo(rank: int, bar):
    """Console lines from rank 0 only, printed above the progress bar when there is one."""
    def echo(line: str) -> None:
        if rank != 0:
            return
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)
    return echo


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor)
    return tensor.tolist()


def _reports_grad_norm(engine) -> bool:
    """DeepSpeed keeps the global grad norm only when a ZeRO/mixed-precision optimizer wraps ours."""
    return hasattr(engine.optimizer, "_global_grad_norm")


def _grad_norm_now(engine) -> torch.Tensor:
    """Global 2-norm of the (already all-reduced) gradients, for the plain stage-0 fp32 optimizer."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


def _as_float(norm) -> float | None:
    if norm is None:
        return None
    return float(norm.item() if isinstance(norm, torch.Tensor) else norm)


def train(plan: RunPlan) -> dict:
    """Run (or continue) pre-training as planned; returns the last logged train metrics."""
    import deepspeed

    cfg, dist, stream = plan.config, plan.dist, plan.stream
    rank, on_cuda = dist.rank, dist.device.type == "cuda"
    description = describe_run(plan)
    total_steps = stream.total_steps

    # Model, optimizer, schedule, DeepSpeed engine.
    model = plan.model.to(dist.device)  # before the optimizer: fused AdamW wants its params on the GPU
    optimizer = build_optimizer(model, cfg.optim, offload=offloads_optimizer(plan.ds_config), on_cuda=on_cuda)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=plan.ds_config, dist_init_required=False)
    seed_rank_rngs(cfg.seed, rank)
    precision = precision_of(plan.ds_config)

    start_step, consumed_tokens = 0, 0
    if plan.resume_from is not None:
        client = checkpoints.load_checkpoint(engine, plan.resume_from, rank)
        start_step, consumed_tokens = int(client["step"]), int(client["consumed_tokens"])
        if start_step != stream.step:
            raise checkpoints.CheckpointError(f"{plan.resume_from}: DeepSpeed state is at step {start_step} but "
                                              f"the data position at {stream.step}")

    writer = MetricsWriter(cfg.out_dir, enabled=rank == 0, jsonl=cfg.logging.jsonl,
                           tensorboard=cfg.logging.tensorboard, resume_step=start_step if plan.resume_from else None)
    bar = None
    if rank == 0 and cfg.logging.progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
    echo = _echo(rank, bar)
    if rank == 0:
        echo("resolved run config:\n" + json.dumps(description, indent=1, default=str))
        echo(f"global batch {description['derived']['global_batch']} = micro {cfg.batch.micro} × grad_accum "
             f"{cfg.batch.grad_accum} × {dist.world_size} ranks; {total_steps} steps; precision {precision}")
        if plan.resume_from is not None:
            echo(f"resumed from {plan.resume_from} at step {start_step}")
    validation = plan.validation
    peak = peak_flops(torch.cuda.get_device_name(dist.device), precision) if on_cuda else None

    # Counters of the current logging interval (host numbers; the loss sum stays on the device).
    loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    correct_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
    masked_count = 0  # this rank's predicted tokens in the interval
    timed = dict(tokens=0, samples=0, flops=0.0)  # this rank's work in the timed part of the interval
    timer_start = None
    paused = 0.0  # seconds spent in evaluation/checkpointing inside the current interval
    unsynced_tokens = 0  # this rank's tokens not yet added to consumed_tokens (summed over ranks)
    reports_norm = _reports_grad_norm(engine)
    own_norm = None
    last: dict = {}
    step = start_step
    try:
        while step < total_steps:
            # Micro-steps of one optimizer step (DeepSpeed steps the optimizer on the last one).
            engine.train()
            step_tokens = step_samples = 0
            step_flops = 0.0
            for _ in range(cfg.batch.grad_accum):
                item = stream.next_micro_batch()
                if item.phase.changed:
                    echo(f"curriculum: {item.phase.describe}")
                    writer.write("phase", step, {"phase": item.phase.index, "name": item.phase.name,
                                                 "unit": item.phase.unit, "rate": item.phase.rate,
                                                 "seq_len": item.phase.seq_len}, console=False)
                batch = item.batch
                tokens = int((batch.segment_ids != 0).sum())
                masked = int((batch.labels != -100).sum())
                out = engine(input_ids=batch.input_ids.to(engine.device, non_blocking=True),
                             segment_ids=batch.segment_ids.to(engine.device, non_blocking=True),
                             labels=batch.labels.to(engine.device, non_blocking=True))
                engine.backward(out.loss)
                log_next = (step + 1) % cfg.logging.interval == 0 or step + 1 == total_steps
                if log_next and not reports_norm and engine.is_gradient_accumulation_boundary():
                    own_norm = _grad_norm_now(engine)
                engine.step()
                loss_sum += out.loss.detach().double() * masked
                correct_sum += out.num_correct.detach().double()
                masked_count += masked
                step_tokens += tokens
                step_samples += batch.input_ids.shape[0]
                step_flops += training_flops(plan.model_config, item.phase.seq_len, tokens, masked)
            step += 1
            unsynced_tokens += step_tokens
            if timer_start is None:  # the first step after (re)start is warm-up: not timed
                if on_cuda:
                    torch.cuda.synchronize()
                timer_start = time.perf_counter()
            else:
                timed["tokens"] += step_tokens
                timed["samples"] += step_samples
                timed["flops"] += step_flops
            if bar is not None:
                bar.update(1)

            # Log: the only place the loop waits for the device.
            if step % cfg.logging.interval == 0 or step == total_steps:
                grad_norm = _as_float(engine.get_global_grad_norm() if reports_norm else own_norm)
                if on_cuda:
                    torch.cuda.synchronize()
                now = time.perf_counter()
                totals = _all_reduce_sum([loss_sum.item(), correct_sum.item(), masked_count,
                                          timed["tokens"], timed["samples"], timed["flops"], unsynced_tokens],
                                         engine.device)
                loss_total, correct, masked_total, tok, samp, flops, new_tokens = totals
                consumed_tokens += int(new_tokens)
                unsynced_tokens = 0
                values = {"loss": loss_total / max(masked_total, 1), "mlm_accuracy": correct / max(masked_total, 1),
                          "lr": cfg.optim.lr * lr_multiplier(step - 1, cfg.optim, total_steps),
                          "grad_norm": grad_norm, "phase": item.phase.index, "mask_rate": item.phase.rate,
                          "consumed_tokens": consumed_tokens}
                if tok > 0:
                    seconds = now - timer_start - paused
                    rates = throughput(tok, samp, seconds, flops / max(tok, 1), dist.world_size, peak)
                    values.update(rates)
                values["peak_memory_gib"] = peak_memory_gib()
                writer.write("train", step, values, echo=echo)
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
                last = values
                loss_sum.zero_()
                correct_sum.zero_()
                masked_count = 0
                timed = dict(tokens=0, samples=0, flops=0.0)
                timer_start = now
                paused = 0.0

            # Evaluate: validation MLM loss on the held-out split.
            if validation is not None and (step % cfg.eval.interval == 0 or step == total_steps):
                began = time.perf_counter()
                writer.write("valid", step, validation.evaluate(engine), echo=echo)
                paused += time.perf_counter() - began

            # Checkpoint: complete or ignored (see engine.training.checkpoints).
            if step % cfg.checkpoint.interval == 0 or step == total_steps:
                began = time.perf_counter()
                consumed_tokens += int(_all_reduce_sum([unsynced_tokens], engine.device)[0])
                unsynced_tokens = 0
                _save(engine, plan, description, step, consumed_tokens)
                paused += time.perf_counter() - began
    finally:
        stream.close()
        if bar is not None:
            bar.close()
        writer.close()
    return last


def _save(engine, plan: RunPlan, description: dict, step: int, consumed_tokens: int) -> Path:
    data_state = plan.stream.state_dict()
    client_state = {"step": step, "consumed_tokens": consumed_tokens, "data": data_state,
                    "config": description["config"], "model": description["model"],
                    "manifest_hash": data_state.get("manifest_hash"), "world_size": plan.dist.world_size}
    run_state = {**client_state, "derived": description["derived"], "deepspeed": description["deepspeed"]}
    return checkpoints.save_checkpoint(engine, plan.config.checkpoint_dir, step, client_state, run_state,
                                       plan.dist.rank, plan.config.checkpoint.keep_last, torch_dist.barrier)
