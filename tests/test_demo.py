"""`make demo` keeps working: the whole recipe, shortened, leaves every promised output behind."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, teacher_dir


@pytest.mark.slow
def test_demo_runs_every_stage_and_leaves_its_outputs(tmp_path):
    teacher_dir()  # skips with the reason when the teacher package is missing
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "engine.demo", "--out", str(out), "--docs", "300", "--steps", "8",
         "--ner-epochs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for phase in ("token-15", "wwm-15", "wwm-20", "wwm-20-no-corruption"):
        assert f"'{phase}'" in result.stdout + result.stderr, f"phase {phase} never started"
    assert (out / "hf" / "config.json").is_file() and (out / "hf" / "tokenizer.json").is_file()
    assert (out / "curves.png").stat().st_size > 0
    results = json.loads((out / "ner" / "results.json").read_text())
    assert results, "the NER report is empty"
    timings = json.loads((out / "demo_timings.json").read_text())
    for saved in ("resolved_config.json", "shards/resolved_config.json", "init/resolved_config.json",
                  "pretrain/resolved_config.json", "hf/resolved_config.json", "curves.config.json",
                  "ner/resolved_config.json"):
        assert json.loads((out / saved).read_text()), f"{saved}: each stage keeps its resolved config"
    assert json.loads((out / "pretrain" / "resolved_config.json").read_text())["config"]["steps"] == 8  # config + derived numbers
    assert list(timings) == ["vocabulary + packed shards", "distillation init", "curriculum pre-training",
                             "export to Hugging Face", "loss curves", "NER evaluation"]
