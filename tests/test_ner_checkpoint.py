"""`evaluate_ner.py --model <pre-training checkpoint>`: exported through export_hf's code, same scores, no leftovers."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine.corpus.demo import demo_documents, write_demo_ner
from engine.evaluate_ner import main as evaluate
from engine.export_hf import main as export
from engine.shards import ShardOptions, build_shards, train_vocab

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "2", "--lr", "5e-3", "--batch-size", "8", "--seeds", "1", "--device", "cpu", "--max-length", "64"]
RUN_CONFIG = """
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
micro = 4
grad_accum = 1

[deepspeed]
config = "ds_configs/zero0_fp32_cpu.json"
precision = "fp32"

[checkpoint]
interval = 4

[logging]
progress_bar = false
tensorboard = false

[eval]
interval = 4
steps = 1
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step one-process pre-training run (tiny BERT, ZeRO-0) on the demo corpus, and a demo NER task."""
    root = tmp_path_factory.mktemp("ner_ckpt")
    docs = demo_documents(200, seed=0)
    build_shards([(f"demo{i}", d) for i, d in enumerate(docs)], root / "shards", train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    config = root / "run.toml"
    config.write_text(RUN_CONFIG.format(shards=root / "shards"))
    done = subprocess.run([sys.executable, "engine/pretrain.py", "--config", str(config), f"--out_dir={root / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    write_demo_ner(root / "data" / "NCBI-disease", sizes=(60, 20, 20))
    return root


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A private temporary folder, so the test can see what the export leaves behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _scores(out):
    unit = json.loads((out / "ncbi-disease" / "seed1" / "result.json").read_text())
    history = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in unit["recipe"]["history"]]
    return unit["model"], unit["devel"], unit["test"], history


@pytest.fixture(scope="module")
def via_export(run):
    """The two-command way: export_hf.py, then evaluate_ner.py on the HF folder."""
    assert export([str(run / "run" / "checkpoints"), str(run / "hf")]) == 0
    evaluate(["--model", str(run / "hf"), "--data", str(run / "data"), "--out", str(run / "via_export"), *QUICK])
    return _scores(run / "via_export")


@pytest.mark.parametrize("which", ["checkpoints", "tag"])
def test_checkpoint_scores_the_same_as_export_then_evaluate(run, via_export, scratch, tmp_path, which):
    checkpoints = run / "run" / "checkpoints"
    model = checkpoints if which == "checkpoints" else checkpoints / "step_00000004"
    evaluate(["--model", str(model), "--data", str(run / "data"), "--out", str(tmp_path / "direct"), *QUICK])
    name, *direct = _scores(tmp_path / "direct")
    assert direct == list(via_export[1:]) and via_export[2]["support"] > 0
    assert name == str(model)  # the report names the checkpoint, not the temporary folder
    assert list(scratch.iterdir()) == []  # the temporary export is gone


def test_temporary_export_is_removed_when_evaluation_fails(run, scratch, tmp_path):
    (tmp_path / "data" / "NCBI-disease").mkdir(parents=True)
    (tmp_path / "data" / "NCBI-disease" / "train.tsv").write_text("aspirin\tS-Chemical\nworks\tI-Chemical\n\n")
    with pytest.raises(SystemExit) as exc:
        evaluate(["--model", str(run / "run" / "checkpoints"), "--data", str(tmp_path / "data"),
                  "--out", str(tmp_path / "out"), *QUICK])
    assert str(exc.value.code).startswith("error: ")
    assert list(scratch.iterdir()) == [] and not (tmp_path / "out").exists()


def test_checkpoint_that_cannot_be_exported_is_one_error_line(run, scratch, tmp_path):
    half = tmp_path / "checkpoints" / "step_00000008"
    half.mkdir(parents=True)
    (half / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    with pytest.raises(SystemExit) as exc:
        evaluate(["--model", str(tmp_path / "checkpoints"), "--data", str(run / "data"),
                  "--out", str(tmp_path / "out"), *QUICK])
    assert str(exc.value.code).startswith(f"error: {tmp_path / 'checkpoints'}: cannot export the checkpoint: no complete")
    assert list(scratch.iterdir()) == [] and not (tmp_path / "out").exists()
