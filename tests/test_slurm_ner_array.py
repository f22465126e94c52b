"""slurm/ner_array.sbatch on a real one-node SLURM: one (task, seed) per array index, then the merge job.

Tiny random BERT and the demo NER data laid out as NCBI-disease; two seeds = two array elements.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from engine.corpus.demo import write_demo_ner
from engine.ner.conll import read_conll
from tests.tiny_model import write_tiny_bert

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "2", "--lr", "1e-2", "--batch-size", "8", "--device", "cpu"]


def submit(env: dict, *args: str, **params: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "slurm/ner_array.sbatch", *args], cwd=ROOT, env={**env, **params},
                          capture_output=True, text=True)


def wait_gone(env: dict, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
            return
        time.sleep(1)
    pytest.fail("NER jobs still queued")


def test_array_runs_every_task_seed_and_the_merge_job_writes_the_report(slurm_cluster, tmp_path):
    data = tmp_path / "data"
    write_demo_ner(data / "NCBI-disease", sizes=(60, 20, 20))
    words = sorted({w for s in read_conll(data / "NCBI-disease" / "train.tsv").sentences for w in s.words})
    model = write_tiny_bert(tmp_path / "tiny", words[::2])
    out, logs = tmp_path / "ner", tmp_path / "logs"
    logs.mkdir()
    result = submit(slurm_cluster, f"--output={logs}/%x-%A_%a.out", "--", *QUICK,
                    MODEL=str(model), DATA=str(data), TASKS="ncbi-disease", SEEDS="1,2", OUT=str(out))
    assert result.returncode == 0, result.stderr
    array_id = result.stdout.split()[1]
    assert "2 units" in result.stdout
    wait_gone(slurm_cluster)
    report = json.loads((out / "results.json").read_text())
    assert sorted((u["task"], u["seed"]) for u in report["units"]) == [("ncbi-disease", 1), ("ncbi-disease", 2)]
    assert (out / "results.md").is_file()
    for index, seed in ((0, 1), (1, 2)):
        log = (logs / f"bioptimus-ner-{array_id}_{index}.out").read_text()
        assert f"index {index}: task ncbi-disease, seed {seed}" in log
        assert (out / f"unit_ncbi-disease_{seed}" / "ncbi-disease" / f"seed{seed}" / "result.json").is_file()


@pytest.mark.parametrize("params, expected", [
    ({}, "error: MODEL is not set"),
    ({"MODEL": "/nonexistent/model"}, "error: MODEL: no HF folder (config.json) at /nonexistent/model"),
    ({"SEEDS": "1,x"}, "error: SEEDS: x is not an integer"),
])
def test_bad_input_is_refused_before_anything_is_submitted(slurm_cluster, tmp_path, params, expected):
    model = write_tiny_bert(tmp_path / "tiny", ["word"]) if "MODEL" not in params else None
    data = tmp_path / "data"
    (data / "task").mkdir(parents=True)
    (data / "task" / "train.tsv").write_text("w\tO\n")
    defaults = {"DATA": str(data), "OUT": str(tmp_path / "ner")}
    if params:
        defaults["MODEL"] = str(model) if model else params["MODEL"]
    result = submit(slurm_cluster, **{**defaults, **params})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith(expected)
    queued = subprocess.run(["squeue", "-h"], env=slurm_cluster, capture_output=True, text=True).stdout
    assert queued.strip() == ""
