"""Verified export: what `export_hf.py` writes is checked, and a broken checkpoint fails loudly.

The fast tests tamper with a HF folder written from an in-memory model; the slow ones export real
2-rank ZeRO-0/2/3 checkpoints (tiny model, 4 steps, one per curriculum phase) and break copies of them the ways known to
produce near-empty exports: a truncated shard, a zero-sized tensor, a missing rank file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.bert.config import BertConfig
from engine.bert.hf_io import save_hf_folder
from engine.bert.modeling import BertForMaskedLM
from engine.corpus.demo import demo_documents
from engine.export_hf import main
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.checkpoints import complete_tags, step_of, write_marker
from engine.training.export_verify import ExportCheckError, check_export, check_weights
from engine.training.setup import free_port

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(vocab_size: int = 200) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
    return BertForMaskedLM(config).eval()


def tamper(folder: Path, name: str, change) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[name] = change(tensors[name]).contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_faithful_export_passes_with_its_figures(tmp_path):
    model = tiny_model()
    folder = save_hf_folder(model, tmp_path / "hf", true_vocab_size=190)
    figures = check_export(folder, model, 190)
    assert figures["parameters"] == sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())
    assert figures["max_logit_difference"] < 1e-5


@pytest.mark.parametrize("name, change, message", [
    ("bert.encoder.layer.1.output.dense.weight", torch.zeros_like, "is all zeros"),
    ("bert.embeddings.LayerNorm.weight", torch.zeros_like, "is all zeros"),
    ("bert.encoder.layer.0.attention.self.query.weight", lambda t: t[:0], "is empty"),
    ("bert.encoder.layer.0.intermediate.dense.weight", lambda t: t[:, :-1], "has shape"),
    ("bert.encoder.layer.0.output.dense.weight", lambda t: t.flip(0), "logits of the exported model differ"),
    ("cls.predictions.bias", lambda t: t * float("nan"), "NaN"),
])
def test_export_that_differs_from_the_model_is_refused(tmp_path, name, change, message):
    model = tiny_model()
    folder = save_hf_folder(model, tmp_path / "hf")
    tamper(folder, name, change)
    with pytest.raises(ExportCheckError, match=message):
        check_export(folder, model, model.config.vocab_size)


def test_missing_tensor_is_refused(tmp_path):
    model = tiny_model()
    folder = save_hf_folder(model, tmp_path / "hf")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["bert.encoder.layer.1.attention.output.dense.bias"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportCheckError, match="tensors missing .*attention.output.dense.bias"):
        check_export(folder, model, model.config.vocab_size)


def test_zero_biases_of_a_fresh_model_are_not_flagged():
    weights = dict(tiny_model().state_dict())
    assert not weights["bert.encoder.layer.0.output.dense.bias"].any()
    check_weights(weights, Path("fresh"))


# -- real checkpoints -------------------------------------------------------------------------------

RUN_CONFIG = """
steps = 4
seq_len = 64
seed = 7

[model]
preset = "tiny"

[data]
shards = "{shards}"

[curriculum]
preset = "bioptimus"

[batch]
micro = 2
grad_accum = 1

[deepspeed]
config = "ds_configs/zero{stage}_{file_precision}.json"
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


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Complete 2-rank checkpoints per ZeRO stage, made on first use."""
    root = tmp_path_factory.mktemp("export_verify")
    docs = demo_documents(120, seed=0)
    build_shards([(f"demo{i}", d) for i, d in enumerate(docs)], root / "shards", train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.0))
    made: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in made:
            config = root / f"zero{stage}.toml"
            config.write_text(RUN_CONFIG.format(shards=root / "shards", stage=stage,
                                                file_precision="fp32_cpu" if stage == 0 else "bf16"))
            out = root / f"run{stage}"
            cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(free_port()),
                   "--num_gpus", "2", "engine/pretrain.py", "--config", str(config), f"--out_dir={out}"]
            result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            made[stage] = complete_tags(out / "checkpoints")[-1]
        return made[stage]
    return get


def export_error(tag: Path, out: Path) -> str:
    with pytest.raises(SystemExit) as exc:
        main([str(tag), str(out)])
    return str(exc.value.code)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_good_checkpoint_of_every_zero_stage_exports_and_passes_its_check(checkpoints, tmp_path, stage, capsys):
    assert main([str(checkpoints(stage)), str(tmp_path / "hf")]) == 0
    line = capsys.readouterr().out
    assert "checked" in line and "logits equal the engine's within" in line
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def broken_copy(tag: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoints" / tag.name
    shutil.copytree(tag, copy)
    return copy


@pytest.mark.slow
def test_truncated_zero3_shard_fails_with_one_line_and_no_output(checkpoints, tmp_path):
    tag = broken_copy(checkpoints(3), tmp_path)
    shard = sorted(tag.glob("*optim_states.pt"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    message = export_error(tag, tmp_path / "hf")
    assert message.startswith("error: ") and "\n" not in message and shard.parent.name in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


@pytest.mark.slow
def test_missing_rank_file_fails_with_one_line_and_no_output(checkpoints, tmp_path):
    tag = broken_copy(checkpoints(2), tmp_path)
    rank1 = [p for p in tag.glob("*optim_states.pt") if "rank_1" in p.name]
    assert rank1, sorted(p.name for p in tag.iterdir())
    rank1[0].unlink()
    message = export_error(tag, tmp_path / "hf")
    assert message.startswith("error: ") and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


@pytest.mark.slow
def test_zero_sized_tensor_fails_with_one_line_naming_it_and_no_output(checkpoints, tmp_path):
    tag = broken_copy(checkpoints(0), tmp_path)
    path = tag / "mp_rank_00_model_states.pt"
    states = torch.load(path, map_location="cpu", weights_only=True)
    states["module"]["bert.encoder.layer.0.attention.self.value.weight"] = torch.empty(0)
    torch.save(states, path)
    # As DeepSpeed itself would save it (#3841): the marker's checksums cover the empty tensor, so
    # only the weight check, not the checksum check, can catch it.
    write_marker(tag, step_of(tag))
    message = export_error(tag, tmp_path / "hf")
    assert message.startswith("error: ") and "\n" not in message
    assert "bert.encoder.layer.0.attention.self.value.weight is empty" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
