"""SIGKILL a 2-rank run at 20 random moments (inside steps, during checkpoint writes, right as
metrics lines are written); every `--resume auto` must succeed and the run must end with weights
and per-step losses bit-identical to an uninterrupted run.

The moments are drawn from PYTEST_SEED (default 1234), so a failure can be replayed; the list of
moments and what each kill left behind is written to `kills.json` beside the runs and printed.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from engine.corpus.demo import demo_documents
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.checkpoints import MARKER, complete_tags, step_of, tag_for
from engine.training.export import fp32_state_dict
from tests.test_pretrain_e2e import launch, train_losses_safe

pytestmark = pytest.mark.slow

KILLS = 20
STEPS = 12
CONFIG = """
steps = {steps}
seq_len = 64
seed = 11
[model]
preset = "tiny"
[data]
shards = "{shards}"
prefetch = 2
[curriculum]
preset = "bioptimus"
[optim]
lr = 2e-3
warmup_steps = 2
[batch]
micro = 4
grad_accum = 2
[deepspeed]
config = "ds_configs/zero2_bf16.json"
precision = "fp32"
[checkpoint]
interval = 1
keep_last = 2
[logging]
interval = 1
progress_bar = false
tensorboard = false
[eval]
interval = 0
"""


def run_to_end(config: Path, out_dir: Path, *extra: str) -> Path:
    proc = launch(config, out_dir, *extra)
    if proc.wait(timeout=1200) != 0:
        log = (out_dir.parent / f"{out_dir.name}.log").read_text(errors="replace")
        pytest.fail(f"pretrain exited {proc.returncode}:\n{log[-3000:]}")
    return out_dir


def resumable_step(run: Path) -> int:
    tags = complete_tags(run / "checkpoints")
    return step_of(tags[-1]) if tags else 0


def triggered(kind: str, step: int, run: Path, metrics_size: int, start: int) -> bool:
    """Whether the moment `kind` at `step` has come (polled every few milliseconds)."""
    metrics = run / "metrics.jsonl"
    if kind == "step":  # step `step` is logged: the ranks are in its checkpoint or the next step
        return metrics.is_file() and max(train_losses_safe(metrics), default=0) >= step
    if kind == "checkpoint":  # DeepSpeed has begun writing the tag of `step`
        return (run / "checkpoints" / tag_for(step)).is_dir()
    # a metrics line is being written: the file grows past its size before the launch, or (the resume
    # first cut it back to the checkpoint's step) a line after the resumed step is there
    return metrics.is_file() and (metrics.stat().st_size > metrics_size
                                  or max(train_losses_safe(metrics), default=0) > start)


def test_twenty_kills_then_resume_auto_give_bit_identical_weights(tmp_path):
    shards = tmp_path / "shards"
    docs = demo_documents(300, seed=3)
    build_shards([(f"d{i}", d) for i, d in enumerate(docs)], shards, train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(steps=STEPS, shards=shards))
    reference = run_to_end(config, tmp_path / "reference")

    rng = random.Random(os.environ.get("PYTEST_SEED", "1234"))
    run = tmp_path / "killed"
    moments = []
    while len(moments) < KILLS:
        start = resumable_step(run)
        kind = rng.choice(["step", "checkpoint", "metrics"])
        step = min(STEPS, start + rng.randint(1, 2))
        metrics = run / "metrics.jsonl"
        size = metrics.stat().st_size if metrics.is_file() else 0
        proc = launch(config, run, "--resume", "auto")
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline and not triggered(kind, step, run, size, start):
            time.sleep(0.002)
        if proc.poll() is not None:
            log = (run.parent / f"{run.name}.log").read_text(errors="replace")
            pytest.fail(f"launch {len(moments) + 1} ({kind} at step {step}) ended with {proc.returncode} before "
                        f"the kill:\n{log[-3000:]}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        tag = run / "checkpoints" / tag_for(step)
        moments.append({"kind": kind, "step": step, "resumed_from": start,
                        "tag_left": "complete" if (tag / MARKER).is_file() else
                        "partial" if tag.is_dir() else "none"})
    run_to_end(config, run, "--resume", "auto")

    record = tmp_path / "kills.json"
    record.write_text(json.dumps(moments, indent=1))
    print(f"{len(moments)} kills: " + json.dumps(moments))
    assert len(moments) == KILLS
    assert {m["kind"] for m in moments} == {"step", "checkpoint", "metrics"}
    assert train_losses_safe(run / "metrics.jsonl") == list(range(1, STEPS + 1))
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"}
    assert losses == {r["step"]: r["loss"] for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())
                      if r["kind"] == "train"}
    ours = fp32_state_dict(complete_tags(run / "checkpoints")[-1])
    theirs = fp32_state_dict(complete_tags(reference / "checkpoints")[-1])
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
