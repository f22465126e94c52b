"""`engine/plot_metrics.py` turns every bad input into one `error:` line and writes nothing."""
from __future__ import annotations

import json

import pytest

from engine.plot_metrics import main


def _metrics(tmp_path, extra: str = "") -> str:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 5.0 - s / 10}) + "\n"
                            for s in range(1, 6)) + extra)
    return str(path)


def _refused(argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_unreadable_line_in_the_middle_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n{oops\n"
                    + json.dumps({"kind": "train", "step": 2, "loss": 1.0}) + "\n")
    assert "metrics.jsonl:2: not a metrics record" in _refused([str(path), "--out", str(tmp_path / "c.png")])
    assert not (tmp_path / "c.png").exists()


def test_record_without_a_numeric_loss_is_named(tmp_path):
    path = _metrics(tmp_path, json.dumps({"kind": "train", "step": 6, "loss": "nan?"}) + "\n")
    assert "without a numeric step/loss" in _refused([path, "--out", str(tmp_path / "c.png")])


def test_torn_last_line_is_dropped_and_the_plot_drawn(tmp_path, capsys):
    path = _metrics(tmp_path, '{"kind": "train", "st')
    assert main([path, "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert "dropped a torn last line" in capsys.readouterr().err


@pytest.mark.parametrize("out, message", [("folder", "is a folder"), ("curves.txt", "must name a .png"),
                                          ("file/curves.png", "cannot write")])
def test_bad_out_is_one_line_and_leaves_nothing(tmp_path, out, message):
    path = _metrics(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("a file where a folder is needed")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert message in _refused([path, "--out", str(tmp_path / out)])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
