"""A shared checkpoint must not run code: a pickle with a `__reduce__` planted in each checkpoint
file position (the module states and the ZeRO optimizer shard) is refused by `export_hf.py` and by
`pretrain.py --resume PATH` with one `error:` line naming the file, and its code never runs.

The attacker re-signs the COMPLETE marker, as anyone who can plant a file can: checksums find
damage, only weights-only loading stops malice.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.corpus.demo import demo_documents
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.checkpoints import MARKER, complete_tags, step_of, write_marker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
steps = 4
seq_len = 64
seed = 7
[model]
preset = "tiny"
[data]
shards = "{shards}"
[optim]
lr = 1e-3
warmup_steps = 1
[batch]
micro = 2
grad_accum = 1
[deepspeed]
config = "ds_configs/zero1_bf16.json"
precision = "fp32"
[checkpoint]
interval = 4
[logging]
interval = 1
progress_bar = false
tensorboard = false
[eval]
interval = 0
"""


class CreatesFileOnLoad:
    """Unpickling calls open(sentinel, "w"): the file appears iff the pickle's code ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, run folder) of a finished 1-process ZeRO-1 run with one checkpoint."""
    root = tmp_path_factory.mktemp("safe_load")
    docs = demo_documents(200, seed=0)
    build_shards([(f"d{i}", d) for i, d in enumerate(docs)], root / "shards", train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    config = root / "run.toml"
    config.write_text(CONFIG.format(shards=root / "shards"))
    result = run("engine/pretrain.py", "--config", str(config), f"--out_dir={root / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return config, root / "run"


def planted(trained, tmp_path, position: str) -> tuple[Path, Path, Path]:
    """A copy of the run whose file matching `position` is a malicious pickle, marker re-signed."""
    config, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    tag = complete_tags(copy / "checkpoints")[-1]
    target = next(tag.glob(position))
    sentinel = tmp_path / "code_ran"
    torch.save({"module": CreatesFileOnLoad(sentinel), "optimizer_state_dict": CreatesFileOnLoad(sentinel)}, target)
    write_marker(tag, step_of(tag))
    return copy, tag, sentinel


def assert_refused(result, target_name: str, sentinel: Path):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-2000:]
    assert lines[-1].startswith("error: ") and target_name in lines[-1] and "refused to load" in lines[-1], lines[-3:]
    assert not sentinel.exists(), "the pickle's code ran"


@pytest.mark.parametrize("position", ["mp_rank_00_model_states.pt", "*optim_states.pt"])
def test_export_refuses_a_checkpoint_file_carrying_code(trained, tmp_path, position):
    run_dir, tag, sentinel = planted(trained, tmp_path, position)
    out = tmp_path / "hf"
    result = run("engine/export_hf.py", str(tag), str(out))
    assert_refused(result, next(tag.glob(position)).name, sentinel)
    assert not out.exists()


@pytest.mark.parametrize("position", ["mp_rank_00_model_states.pt", "*optim_states.pt"])
def test_resume_refuses_a_checkpoint_file_carrying_code(trained, tmp_path, position):
    config, _ = trained
    run_dir, tag, sentinel = planted(trained, tmp_path, position)
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    result = run("engine/pretrain.py", "--config", str(config), f"--out_dir={run_dir}", "--resume", str(tag))
    assert_refused(result, next(tag.glob(position)).name, sentinel)
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before
    assert [p.name for p in complete_tags(run_dir / "checkpoints")] == [tag.name]
    assert (tag / MARKER).is_file()
