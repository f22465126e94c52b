"""`engine/benchmark.py distill`: --methods entries are checked before the work folder is touched."""
from __future__ import annotations

import argparse

import pytest

from engine.benchmarks import distill


def _args(tmp_path, methods: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    distill.add_arguments(parser)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "teacher").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "keep.txt").write_text("earlier results", encoding="utf-8")
    return parser.parse_args(["--out", str(tmp_path / "out.json"), "--parts", "quality", "--methods", methods,
                              "--vocab", str(tmp_path / "vocab.txt"), "--corpus", str(tmp_path / "corpus"),
                              "--teacher", str(tmp_path / "teacher"), "--work", str(tmp_path / "work")])


def test_method_entry_overrides_parse():
    assert distill.parse_method_entry("contextual:3") == ("contextual", {"layer": "3"})
    assert distill.parse_method_entry("distill:distill_mlm_weight=1:distill_epochs=2") == (
        "distill", {"distill_mlm_weight": "1", "distill_epochs": "2"})


@pytest.mark.parametrize("methods, named", [("random,distill:nope=1", "unknown config key nope"),
                                            ("random,fvt:distill_lr=-1", "distill_lr > 0"),
                                            ("random,bogus", "unknown --methods entry 'bogus'")])
def test_bad_method_entry_stops_before_any_work(tmp_path, methods, named):
    args = _args(tmp_path, methods)
    with pytest.raises(SystemExit) as exc:
        distill.run(args)
    assert str(exc.value.code).startswith("error: ") and named in str(exc.value.code)
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "out.json").exists()
