"""Checkpoint integrity: checksums in the COMPLETE marker, fallback past damaged tags, pruning that
never removes the tag a run restarted from, RNG files that may not silently go missing, and a
metrics.jsonl that a kill mid-write cannot make unreadable."""
from __future__ import annotations

import json
import shutil

import pytest

from engine.training import checkpoints
from engine.training.metrics import MetricsFileError, keep_until, read_metrics


def make_tag(ckpt_dir, step, payload=b"weights"):
    """A tag folder with a weights file, an RNG file and a marker as `save_checkpoint` writes it."""
    tag = ckpt_dir / checkpoints.tag_for(step)
    (tag / "rng").mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(payload * 100)
    (tag / "rng" / "rank_0.safetensors").write_bytes(b"rng")
    (tag / checkpoints.RUN_STATE).write_text(json.dumps({"step": step}))
    checkpoints.write_marker(tag, step)
    return tag


def flip_byte(path, at=10):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_marker_records_size_and_sha256_of_every_file(tmp_path):
    tag = make_tag(tmp_path, 10)
    files = json.loads((tag / checkpoints.MARKER).read_text())["files"]
    assert sorted(files) == ["mp_rank_00_model_states.pt", "rng/rank_0.safetensors", "run_state.json"]
    assert files["rng/rank_0.safetensors"]["size"] == 3
    checkpoints.verify_checkpoint(tag)


@pytest.mark.parametrize("damage, message", [
    (lambda tag: flip_byte(tag / "mp_rank_00_model_states.pt"), "sha256 differs"),
    (lambda tag: (tag / "mp_rank_00_model_states.pt").write_bytes(b"w" * 7), "truncated or replaced"),
    (lambda tag: (tag / "rng" / "rank_0.safetensors").unlink(), "missing"),
    (lambda tag: shutil.rmtree(tag / "rng"), "missing"),
    (lambda tag: (tag / "evil_optim_states.pt").write_bytes(b"x"), "not recorded"),
    (lambda tag: (tag / checkpoints.MARKER).write_text("10\n"), "no checksums"),
])
def test_any_damage_is_found_and_named(tmp_path, damage, message):
    tag = make_tag(tmp_path, 10)
    damage(tag)
    with pytest.raises(checkpoints.CheckpointError, match=message) as info:
        checkpoints.verify_checkpoint(tag)
    assert str(tag) in str(info.value) and "\n" not in str(info.value)


def test_damaged_newest_checkpoint_is_skipped_with_one_line_and_the_previous_one_used(tmp_path):
    make_tag(tmp_path, 10)
    good = make_tag(tmp_path, 20)
    bad = make_tag(tmp_path, 30)
    flip_byte(bad / "mp_rank_00_model_states.pt")
    lines = []
    assert checkpoints.newest_intact(tmp_path, lines.append) == good
    assert len(lines) == 1 and bad.name in lines[0] and "sha256" in lines[0]
    assert checkpoints.resolve_checkpoint(tmp_path, lines.append) == good
    assert (bad / checkpoints.MARKER).is_file(), "a damaged tag is reported, not deleted"


def test_a_damaged_tag_named_explicitly_is_an_error_not_a_fallback(tmp_path):
    make_tag(tmp_path, 10)
    bad = make_tag(tmp_path, 20)
    flip_byte(bad / "run_state.json", at=2)
    with pytest.raises(checkpoints.CheckpointError, match="run_state.json: sha256 differs"):
        checkpoints.resolve_checkpoint(bad)


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    for step in (10, 20):
        flip_byte(make_tag(tmp_path, step) / "mp_rank_00_model_states.pt")
    with pytest.raises(checkpoints.CheckpointError, match="every complete checkpoint is damaged"):
        checkpoints.newest_intact(tmp_path, lambda line: None)


def test_prune_after_a_fallback_keeps_the_tag_the_run_restarted_from(tmp_path):
    # step_30 was damaged, the run resumed from step_20 and has just saved step_22.
    for step in (10, 20, 30):
        make_tag(tmp_path, step)
    flip_byte(tmp_path / "step_00000030" / "mp_rank_00_model_states.pt")
    make_tag(tmp_path, 22)
    checkpoints.prune(tmp_path, keep_last=2, current_step=22)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step_00000020", "step_00000022", "step_00000030"]
    assert checkpoints.newest_intact(tmp_path, lambda line: None).name == "step_00000022"


class _FakeEngine:
    """Stands in for DeepSpeed: loads nothing, reports the client state it was saved with."""

    def __init__(self, world_size):
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
        self.checkpoint_engine = TorchCheckpointEngine()
        self.client_state = {"step": 10, "world_size": world_size}

    def load_checkpoint(self, load_dir, tag, **_):
        return f"{load_dir}/{tag}", self.client_state


def test_missing_rng_file_is_an_error_when_the_world_size_is_unchanged(tmp_path):
    tag = make_tag(tmp_path, 10)
    (tag / "rng" / "rank_0.safetensors").unlink()
    with pytest.raises(checkpoints.CheckpointError, match=r"rank_0.safetensors: missing"):
        checkpoints.load_checkpoint(_FakeEngine(world_size=2), tag, rank=0, world_size=2)


def test_missing_rng_file_on_another_world_size_is_said_once(tmp_path):
    tag = make_tag(tmp_path, 10)
    lines = []
    client = checkpoints.load_checkpoint(_FakeEngine(world_size=1), tag, rank=1, world_size=2, say=lines.append)
    assert client["step"] == 10 and lines == []  # only rank 0 speaks
    (tag / "rng" / "rank_0.safetensors").unlink()
    checkpoints.load_checkpoint(_FakeEngine(world_size=4), tag, rank=0, world_size=2, say=lines.append)
    assert len(lines) == 1 and "saved by 4 ranks, this run has 2" in lines[0]


def _records(*steps):
    return "".join(json.dumps({"kind": "train", "step": s, "loss": 1.0}) + "\n" for s in steps)


def test_torn_last_metrics_line_is_dropped_and_said(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(1, 2, 3) + '{"kind": "train", "st')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert "metrics.jsonl:4: dropped a torn last line" in capsys.readouterr().err


def test_resume_truncates_metrics_to_the_checkpoint_step_through_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(1, 2, 3, 4, 5) + '{"kind": "tr')
    keep_until(path, 3)
    assert path.read_text() == _records(1, 2, 3)


def test_unreadable_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_records(1) + "garbage\n" + _records(2))
    before = path.read_bytes()
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl:2: not a metrics record"):
        keep_until(path, 1)
    assert path.read_bytes() == before
