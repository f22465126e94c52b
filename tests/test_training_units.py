"""Pieces of the trainer that need no process group: schedule, DeepSpeed dict, checkpoints, metrics."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from engine.config import ConfigError
from engine.training import checkpoints
from engine.training.config import BatchSection, DeepSpeedSection, OptimSection
from engine.training.ds_config import complete_ds_config
from engine.training.metrics import keep_until, peak_flops, throughput
from engine.training.optim import Lamb, lr_multiplier, param_groups
from engine.training.plots import PlotError, plot_metrics


# -- learning-rate schedule ----------------------------------------------------------------
def test_warmup_rises_linearly_to_the_peak():
    optim = OptimSection(warmup_steps=4, decay="linear")
    assert [lr_multiplier(s, optim, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_linear_decay_reaches_min_ratio_at_the_last_step():
    optim = OptimSection(warmup_steps=0, decay="linear", min_lr_ratio=0.1)
    assert lr_multiplier(0, optim, 11) == 1.0
    assert lr_multiplier(10, optim, 11) == pytest.approx(0.1 + 0.9 * (1 - 10 / 11))
    assert lr_multiplier(11, optim, 11) == pytest.approx(0.1)


def test_cosine_decay_is_halfway_at_mid_run():
    optim = OptimSection(warmup_steps=10, decay="cosine")
    assert lr_multiplier(10 + 45, optim, 100) == pytest.approx(0.5)


def test_bad_optim_value_names_the_field():
    with pytest.raises(ValueError, match="optim.min_lr_ratio"):
        OptimSection(min_lr_ratio=1.5)


def test_biases_and_layernorm_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    decay, no_decay = param_groups(model, 0.01)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_lamb_step_is_the_adam_direction_scaled_by_the_trust_ratio():
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    weight.grad = torch.tensor([1.0, -2.0])
    Lamb([weight], lr=0.1, betas=(0.9, 0.999), eps=0.0).step()
    adam = torch.tensor([1.0, -1.0])  # first step: m̂/sqrt(v̂) = sign(g)
    expected = torch.tensor([3.0, 4.0]) - 0.1 * (5.0 / adam.norm()) * adam
    torch.testing.assert_close(weight.detach(), expected)


# -- DeepSpeed dict --------------------------------------------------------------------------
def _complete(raw, world_size=2, on_cuda=False, **section):
    return complete_ds_config(raw, DeepSpeedSection(**section), BatchSection(micro=2, grad_accum=2),
                              OptimSection(), world_size=world_size, on_cuda=on_cuda)


def test_global_batch_is_micro_times_accumulation_times_ranks():
    assert _complete({}, world_size=4)["train_batch_size"] == 16


def test_file_batch_size_that_does_not_fit_the_world_size_is_refused():
    with pytest.raises(ConfigError, match="train_batch_size=8 but the run config gives 16"):
        _complete({"train_batch_size": 8}, world_size=4)


def test_declared_global_batch_that_does_not_fit_the_world_size_is_refused():
    with pytest.raises(ConfigError, match="batch.global_batch=32"):
        complete_ds_config({}, DeepSpeedSection(), BatchSection(micro=2, grad_accum=2, global_batch=32),
                           OptimSection(), world_size=2, on_cuda=False)


def test_zero_partition_size_must_divide_the_world_size():
    with pytest.raises(ConfigError, match="zero_hpz_partition_size=4 does not divide the world size 2"):
        _complete({"zero_optimization": {"stage": 3, "zero_hpz_partition_size": 4}})


def test_fp16_is_refused_on_the_cpu_accelerator():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        _complete({"fp16": {"enabled": True}})


def test_parameter_offload_needs_stage_3():
    with pytest.raises(ConfigError, match="offload_param needs ZeRO stage 3"):
        _complete({"zero_optimization": {"stage": 2}}, offload_params=True)


def test_run_config_overrides_stage_and_precision_of_the_file():
    ds = _complete({"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}, zero_stage=3, precision="fp32")
    assert ds["zero_optimization"]["stage"] == 3 and "bf16" not in ds


# -- checkpoints -----------------------------------------------------------------------------
def _fake_tag(ckpt_dir, step, complete=True):
    tag = ckpt_dir / checkpoints.tag_for(step)
    tag.mkdir(parents=True)
    (tag / "weights").write_text("x")
    if complete:
        checkpoints.write_marker(tag, step)
    return tag


def test_newest_complete_checkpoint_wins_over_newer_incomplete_one(tmp_path):
    _fake_tag(tmp_path, 10)
    good = _fake_tag(tmp_path, 20)
    _fake_tag(tmp_path, 30, complete=False)
    (tmp_path / "latest").write_text("step_00000030")  # DeepSpeed's own pointer, never trusted
    assert checkpoints.latest_complete(tmp_path) == good
    assert checkpoints.resolve_checkpoint(tmp_path) == good


def test_checkpoint_folder_without_complete_tag_is_an_error(tmp_path):
    _fake_tag(tmp_path, 10, complete=False)
    with pytest.raises(checkpoints.CheckpointError, match="no complete checkpoint"):
        checkpoints.resolve_checkpoint(tmp_path)


def test_prune_keeps_the_last_k_complete_and_drops_older_partial_ones(tmp_path):
    for step in (10, 20, 30, 40):
        _fake_tag(tmp_path, step)
    _fake_tag(tmp_path, 15, complete=False)
    _fake_tag(tmp_path, 50, complete=False)  # may be being written right now: kept
    checkpoints.prune(tmp_path, keep_last=2, current_step=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000030", "step_00000040", "step_00000050"]


def test_rng_states_round_trip_through_the_rank_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    checkpoints.save_rng(tmp_path, rank=1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    assert checkpoints.load_rng(tmp_path, rank=1)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert not checkpoints.load_rng(tmp_path, rank=0)


# -- metrics -----------------------------------------------------------------------------------
def test_peak_flops_are_looked_up_by_device_name_and_precision():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert peak_flops("Some Future GPU", "bf16") is None


def test_mfu_is_achieved_flops_over_peak_of_all_devices():
    rates = throughput(tokens=1000, samples=10, seconds=2.0, flops_per_token=1e12, world_size=2, peak=1e15)
    assert rates["tokens_per_s"] == 500 and rates["tflops"] == 500
    assert rates["mfu"] == pytest.approx(0.25)


def test_resume_drops_metric_records_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 1.0}) + "\n" for s in range(1, 8)))
    keep_until(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_plot_draws_every_series_of_the_metrics_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k))[1])
    path = tmp_path / "metrics.jsonl"
    train = [{"kind": "train", "step": s, "loss": 7 - s / 10, "tokens_per_s": 1000.0 + s} for s in range(1, 20)]
    records = train + [{"kind": "valid", "step": 10, "loss": 6.0}, {"kind": "valid", "step": 19, "loss": 5.5},
                       {"kind": "phase", "step": 5, "phase": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_metrics(path, tmp_path / "curves.png")

    (fig,) = saved
    ax_loss, ax_speed = fig.axes
    series = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax_loss.lines}
    assert series["train MLM loss"] == ([r["step"] for r in train], [r["loss"] for r in train])
    assert series["validation MLM loss"] == ([10, 19], [6.0, 5.5])
    speed = [line for line in ax_speed.lines if list(line.get_xdata()) != [5, 5]]
    assert [list(line.get_ydata()) for line in speed] == [[r["tokens_per_s"] for r in train]]
    for ax in (ax_loss, ax_speed):  # the phase change is marked on both panels
        assert any(list(line.get_xdata()) == [5, 5] for line in ax.lines)
    assert (ax_loss.get_ylabel(), ax_speed.get_ylabel(), ax_speed.get_xlabel()) == \
        ("loss", "non-pad tokens/s", "optimizer step")
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (880, 770)  # 8x7 in at 110 dpi
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_plot_without_train_records_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "valid", "step": 1, "loss": 1.0}) + "\n")
    with pytest.raises(PlotError, match="no 'train' records"):
        plot_metrics(path, tmp_path / "curves.png")


def test_resume_with_more_steps_or_another_curriculum_is_said_in_one_line():
    from engine.config import to_dict
    from engine.training.config import PretrainConfig
    from engine.training.setup import describe_schedule_change

    saved = PretrainConfig(steps=24)
    state = {"step": 24, "config": to_dict(saved)}
    assert describe_schedule_change(state, saved) is None
    longer = PretrainConfig(steps=36, optim=OptimSection(lr=2e-3))
    line = describe_schedule_change(state, longer)
    assert line.startswith("resume from step 24: ")
    assert "steps 24 -> 36" in line and "optim.lr 0.0001 -> 0.002" in line
    logging_only = PretrainConfig(steps=24)
    logging_only.logging.interval = 1  # not part of the schedule
    assert describe_schedule_change(state, logging_only) is None
