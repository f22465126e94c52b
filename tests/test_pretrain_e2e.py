"""End to end on the CPU accelerator: `deepspeed --num_gpus 2 engine/pretrain.py` on the demo corpus.

One module-scoped set of runs (tiny model, 4-phase BIOptimus curriculum, 24 steps, fp32) serves
every test: loss falls for ZeRO 0-3, exports of ZeRO-0 and ZeRO-3 (sharded) checkpoints load in
transformers with the engine's logits, a run SIGKILLed at a random step inside phase 3 resumes to
bit-identical per-step losses and weights, and a half-written newer checkpoint is passed over.
The kill step is drawn from PYTEST_SEED (default 1234), so a failure can be replayed.
"""
from __future__ import annotations

import json
import os
import random
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.corpus.demo import demo_documents
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.checkpoints import MARKER, complete_tags, tag_for
from engine.training.export import fp32_state_dict, load_checkpoint_model
from engine.training.setup import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = 24  # four phases of 6 steps: phase 3 is steps 12-17
PHASE3 = range(12, 18)
RUN_CONFIG = """
steps = {steps}
seq_len = 64
seed = 7

[model]
preset = "tiny"

[data]
shards = "{shards}"
prefetch = 2

[curriculum]
preset = "bioptimus"

[optim]
lr = 2e-3
warmup_steps = 4

[batch]
micro = 4
grad_accum = 2

[deepspeed]
config = "ds_configs/zero{stage}_{file_precision}.json"
precision = "fp32"

[checkpoint]
interval = 2
keep_last = 3

[logging]
interval = 1
progress_bar = false
tensorboard = false

[eval]
interval = 12
steps = 2
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain_e2e")
    docs = demo_documents(400, seed=0)
    build_shards([(f"demo{i}", d) for i, d in enumerate(docs)], root / "shards", train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    return root


def write_config(workdir: Path, stage: int) -> Path:
    path = workdir / f"zero{stage}.toml"
    file_precision = "fp32_cpu" if stage == 0 else "bf16"
    path.write_text(RUN_CONFIG.format(steps=STEPS, shards=workdir / "shards", stage=stage,
                                      file_precision=file_precision))
    return path


MASTER_PORTS: dict[str, int] = {}  # run folder name -> the rendezvous port of its latest launch


def launch(config: Path, out_dir: Path, *extra: str) -> subprocess.Popen:
    """`deepspeed --num_gpus 2 engine/pretrain.py` in its own session (so SIGKILL reaches every rank)."""
    # `python -m deepspeed.launcher.runner` is the `deepspeed` script, found without an activated venv.
    port = MASTER_PORTS[out_dir.name] = free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(port), "--num_gpus", "2",
           "engine/pretrain.py", "--config", str(config), f"--out_dir={out_dir}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out_dir.parent / f"{out_dir.name}.log", "ab") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def run_to_end(config: Path, out_dir: Path, *extra: str) -> Path:
    proc = launch(config, out_dir, *extra)
    if proc.wait(timeout=300) != 0:
        log = (out_dir.parent / f"{out_dir.name}.log").read_text(errors="replace")
        pytest.fail(f"pretrain exited {proc.returncode}:\n{log[-3000:]}")
    return out_dir


def train_losses(out_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.fixture(scope="module")
def zero_runs(workdir):
    """Finished 2-rank runs per ZeRO stage, made on first use."""
    runs: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in runs:
            runs[stage] = run_to_end(write_config(workdir, stage), workdir / f"run_zero{stage}")
        return runs[stage]
    return get


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_loss_falls_with_two_ranks_for_every_zero_stage(zero_runs, stage):
    losses = train_losses(zero_runs(stage))
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (STEPS - 2, STEPS - 1, STEPS)) / 3
    assert last < first - 0.3, f"ZeRO-{stage}: loss went {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("stage", [0, 3])
def test_exported_folder_gives_engine_logits_in_transformers(zero_runs, tmp_path, stage):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    checkpoint_dir = zero_runs(stage) / "checkpoints"
    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "engine/export_hf.py", str(checkpoint_dir), str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "resolved_config.json").read_text())["checkpoint"] == str(checkpoint_dir)
    assert json.loads((zero_runs(stage) / "resolved_config.json").read_text())["config"]["steps"] == STEPS
    hf_model = AutoModelForMaskedLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["cisplatin induced nephrotoxicity in rats .", "heparin reduced blood pressure"],
                      padding=True, return_tensors="pt")
    ours, config, _, _ = load_checkpoint_model(checkpoint_dir)
    with torch.no_grad():
        theirs = hf_model(**batch).logits
        engine_logits = ours.logits(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    assert theirs.shape[-1] == config.vocab_size
    torch.testing.assert_close(theirs[keep], engine_logits[..., :config.vocab_size][keep], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def killed_in_phase3(workdir, zero_runs):
    """A ZeRO-2 run SIGKILLed at a random step inside phase 3, as it was left (not yet resumed)."""
    zero_runs(2)  # the uninterrupted reference runs first so the two never compete for the cores
    kill_at = random.Random(os.environ.get("PYTEST_SEED", "1234")).choice(PHASE3[1:-1])
    out_dir = workdir / "run_killed"
    proc = launch(write_config(workdir, 2), out_dir)
    metrics = out_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and max(train_losses_safe(metrics), default=0) >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before it could be killed"
    return out_dir, kill_at


def train_losses_safe(metrics: Path) -> list[int]:
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line being written right now
            continue
        if record.get("kind") == "train":
            steps.append(record["step"])
    return steps


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_run_killed_inside_phase3_resumes_to_bit_identical_losses_and_weights(workdir, zero_runs, killed_in_phase3):
    killed, kill_at = killed_in_phase3
    run = copy_run(killed, workdir / "run_resumed")
    newest = complete_tags(run / "checkpoints")[-1]
    resumed_from = int(newest.name.split("_")[1])
    assert resumed_from in PHASE3, f"killed after step {kill_at}, newest checkpoint {resumed_from} is not in phase 3"
    assert STEPS not in train_losses(run)
    run_to_end(write_config(workdir, 2), run, "--resume", "auto")
    reference = zero_runs(2)
    assert train_losses(run) == train_losses(reference)
    ours = fp32_state_dict(complete_tags(run / "checkpoints")[-1])
    theirs = fp32_state_dict(complete_tags(reference / "checkpoints")[-1])
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_kill_during_checkpoint_writing_leaves_previous_checkpoint_loadable(workdir, zero_runs, killed_in_phase3):
    killed, _ = killed_in_phase3
    run = copy_run(killed, workdir / "run_half_written")
    ckpt_dir = run / "checkpoints"
    newest = complete_tags(ckpt_dir)[-1]
    # What a SIGKILL mid-save leaves: DeepSpeed's files of the next tag, one of them truncated,
    # DeepSpeed's own `latest` already naming it, and no COMPLETE marker.
    half = ckpt_dir / tag_for(int(newest.name.split("_")[1]) + 2)
    shutil.copytree(newest, half)
    (half / MARKER).unlink()
    shard = sorted(half.glob("*optim_states.pt"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    (ckpt_dir / "latest").write_text(half.name)
    run_to_end(write_config(workdir, 2), run, "--resume", "auto")
    log = (run.parent / f"{run.name}.log").read_text(errors="replace")
    assert f"resumed from {newest}" in log
    assert train_losses(run) == train_losses(zero_runs(2))


def test_finished_and_killed_runs_leave_no_shared_memory_segment_behind(zero_runs, killed_in_phase3):
    """DeepSpeed's CPU collective names a 66 MiB /dev/shm segment per rank after the rendezvous port and
    never unlinks it; the engine takes the names off once mapped, so neither a finished nor a SIGKILLed
    run holds RAM after it exits."""
    zero_runs(0)
    runs = [name for name in MASTER_PORTS if name in ("run_zero0", killed_in_phase3[0].name)]
    assert len(runs) == 2
    left = [entry.name for entry in Path("/dev/shm").iterdir()
            for name in runs if f"_{MASTER_PORTS[name]}_" in entry.name]
    assert left == []
