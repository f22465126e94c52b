"""Every file in ds_configs/ parses, is completed for 1 and 2 ranks, and says what its name says."""
from pathlib import Path

import pytest

from engine.config import ConfigError
from engine.training.config import BatchSection, DeepSpeedSection, OptimSection
from engine.training.ds_config import complete_ds_config, precision_of, read_ds_config

DS_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "ds_configs").glob("*.json"))


def test_there_is_a_file_per_zero_stage():
    names = {p.name for p in DS_CONFIGS}
    assert {"zero0_fp32_cpu.json", "zero1_bf16.json", "zero2_bf16.json", "zero3_bf16.json"} <= names


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_file_parses_and_matches_its_name(path):
    ds = read_ds_config(path)
    stage = int(path.name[len("zero")])
    assert ds["zero_optimization"]["stage"] == stage
    precision = next(p for p in ("fp32", "bf16", "fp16") if p in path.name)
    assert precision_of(ds) == precision
    assert ("offload" in path.name) == ("offload_optimizer" in ds["zero_optimization"])


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("world_size", [1, 2])
def test_file_completes_into_a_full_deepspeed_dict(path, world_size):
    on_cuda = "fp16" in path.name  # fp16 is refused on the CPU accelerator
    ds = complete_ds_config(read_ds_config(path), DeepSpeedSection(config=path), BatchSection(micro=4, grad_accum=3),
                            OptimSection(grad_clip=0.5), world_size=world_size, on_cuda=on_cuda)
    assert ds["train_batch_size"] == 4 * 3 * world_size
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert "optimizer" not in ds and "scheduler" not in ds


def test_malformed_file_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:2: cannot parse"):
        read_ds_config(bad)
