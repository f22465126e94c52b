"""Resume on another number of ranks (CPU ranks, tiny model, dropout off so losses can be compared).

For ZeRO 1 and 3: a 2-rank and a 1-rank run with the same global batch give the same per-step
losses; a 2-rank run stopped after step 4 (inside curriculum phase 2, mid-epoch) resumes on 1 rank,
and a 1-rank run resumes on 2 ranks, each to the uninterrupted run's per-step losses. "The same"
means within fp32 reduction-order noise: the ranks sum gradients in another order than one rank
accumulating micro-batches. Rows and masks being equal is shown at the stream level
(`tests/test_elastic_stream.py`); here a wrong row or mask would move the loss far beyond the noise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.corpus.demo import demo_documents
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.checkpoints import POINTER, complete_tags, tag_for
from engine.training.setup import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12  # bioptimus preset: four phases of three steps; step 4 lies inside phase 2
STOP = 4
GLOBAL_BATCH = 8
NOISE = 2e-4  # fp32 reduction-order differences on per-step losses around 6-7 (measured ~1e-6)
RUN_CONFIG = """
steps = {steps}
seq_len = 64
seed = 11

[model]
preset = "tiny"
hidden_dropout = 0.0
attention_dropout = 0.0

[data]
shards = "{shards}"

[curriculum]
preset = "bioptimus"

[optim]
lr = 2e-3
warmup_steps = 2

[batch]
micro = 4
grad_accum = {grad_accum}

[deepspeed]
config = "ds_configs/zero{stage}_bf16.json"
precision = "{precision}"

[checkpoint]
interval = {stop}
keep_last = 5

[logging]
interval = 1
progress_bar = false
tensorboard = false

[eval]
interval = 0
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elastic") / "shards"
    docs = demo_documents(200, seed=2)
    build_shards([(f"demo{i}", d) for i, d in enumerate(docs)], root, train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.0))
    return root


def run(shards: Path, out: Path, ranks: int, stage: int, precision: str = "fp32", *extra: str):
    config = out.parent / f"{out.name}.toml"
    config.write_text(RUN_CONFIG.format(steps=STEPS, shards=shards, stage=stage, precision=precision, stop=STOP,
                                        grad_accum=GLOBAL_BATCH // (4 * ranks)))
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(free_port()), "--num_gpus",
           str(ranks), "engine/pretrain.py", "--config", str(config), f"--out_dir={out}", *extra]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    return result.stdout


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def stopped_copy(run_dir: Path, dst: Path) -> Path:
    """`run_dir` as a preemption after step STOP would have left it."""
    shutil.copytree(run_dir, dst)
    for tag in complete_tags(dst / "checkpoints"):
        if tag.name != tag_for(STOP):
            shutil.rmtree(tag)
    (dst / "checkpoints" / POINTER).write_text(tag_for(STOP) + "\n")
    kept = [line for line in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= STOP]
    (dst / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    return dst


def optimizer_settings(tag_dir: Path) -> tuple[list[dict], dict]:
    """(each param group's hyper-parameters, each state's Adam step) from rank 0's optimizer file of a tag."""
    from engine.training.safe_load import load_weights_only

    [path] = tag_dir.glob("*zero_pp_rank_0_mp_rank_00_optim_states.pt")
    pending = [load_weights_only(path, map_location="cpu")]
    while pending:  # the torch optimizer's state dict, wherever the ZeRO stage nests it
        item = pending.pop()
        if isinstance(item, dict) and {"state", "param_groups"} <= set(item):
            return ([{k: v for k, v in group.items() if k != "params"} for group in item["param_groups"]],
                    {key: float(state["step"]) for key, state in item["state"].items()})
        if isinstance(item, dict):
            pending.extend(item.values())
    raise AssertionError(f"{path}: no optimizer state dict")


def max_difference(a: dict[int, float], b: dict[int, float], steps) -> float:
    return max(abs(a[s] - b[s]) for s in steps)


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    made = {}

    def get(ranks: int, stage: int, precision: str = "fp32") -> Path:
        key = (ranks, stage, precision)
        if key not in made:
            out = tmp_path_factory.mktemp("runs") / f"r{ranks}_z{stage}_{precision}"
            run(shards, out, ranks, stage, precision)
            made[key] = out
        return made[key]
    return get


@pytest.mark.parametrize("stage", [1, 3])
def test_one_and_two_ranks_with_the_same_global_batch_give_the_same_losses(runs, stage):
    one, two = losses(runs(1, stage)), losses(runs(2, stage))
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    difference = max_difference(one, two, range(1, STEPS + 1))
    print(f"ZeRO-{stage} 1 vs 2 ranks: max per-step loss difference {difference:.3g}")
    assert difference < NOISE


@pytest.mark.parametrize("stage", [1, 3])
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_ranks_matches_the_uninterrupted_run(runs, shards, tmp_path, stage, before,
                                                                         after):
    reference = runs(before, stage)
    resumed = stopped_copy(reference, tmp_path / "resumed")
    log = run(shards, resumed, after, stage, "fp32", "--resume", "auto")
    grad_accum = GLOBAL_BATCH // (4 * after)
    assert f"world size {before} -> {after}: grad_accum {GLOBAL_BATCH // (4 * before)} -> {grad_accum}" in log
    assert not (resumed / "checkpoints" / "universal").exists()
    ours, theirs = losses(resumed), losses(reference)
    assert sorted(ours) == list(range(1, STEPS + 1))
    difference = max_difference(ours, theirs, range(STOP + 1, STEPS + 1))
    print(f"ZeRO-{stage} {before} -> {after} ranks at step {STOP}: max per-step loss difference {difference:.3g}")
    assert difference < NOISE
    # Its optimizer counts steps and keeps each group's weight decay as the uninterrupted run's does:
    # the no-decay group decayed after a ZeRO-3 universal load moved the losses by only 4.6e-5 (< NOISE).
    ckpt = f"checkpoints/{tag_for(STEPS)}"
    assert optimizer_settings(resumed / ckpt) == optimizer_settings(reference / ckpt)


def test_global_batch_that_cannot_be_split_is_refused_with_one_line(runs, shards, tmp_path):
    resumed = stopped_copy(runs(2, 1), tmp_path / "resumed")
    config = tmp_path / "resumed.toml"
    config.write_text(RUN_CONFIG.format(steps=STEPS, shards=shards, stage=1, precision="fp32", stop=STOP,
                                        grad_accum=1))
    result = subprocess.run([sys.executable, "engine/pretrain.py", "--config", str(config), f"--out_dir={resumed}",
                             "--batch.micro=3", "--resume", "auto"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "global batch 8" in lines[0] and "cannot be kept on 1 ranks with micro 3" in lines[0]


@pytest.mark.parametrize("stage", [1, 3])
def test_bf16_resume_on_fewer_ranks_stays_within_bf16_noise(runs, shards, tmp_path, stage):
    reference = runs(2, stage, "bf16")
    resumed = stopped_copy(reference, tmp_path / "resumed")
    run(shards, resumed, 1, stage, "bf16", "--resume", "auto")
    difference = max_difference(losses(resumed), losses(reference), range(STOP + 1, STEPS + 1))
    print(f"ZeRO-{stage} bf16 2 -> 1 ranks at step {STOP}: max per-step loss difference {difference:.3g}")
    assert difference < 0.05  # bf16 keeps 8 bits of mantissa: ~0.4 % of a loss near 7
