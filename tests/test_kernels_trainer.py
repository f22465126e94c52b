"""The trainer's `[model] kernels` field: it sets the dispatch backend, shows the per-op choices, and
a forced backend that cannot run here stops with one `error:` line before anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.corpus.demo import demo_documents
from engine.pretrain import main
from engine.shards import ShardOptions, build_shards, train_vocab
from kernels import dispatch
from tests.kernel_cases import requires_triton

ROOT = Path(__file__).resolve().parents[1]
NO_DROPOUT = '--model.overrides={"hidden_dropout": 0.0, "attention_dropout": 0.0}'


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kernels_trainer") / "shards"
    docs = demo_documents(120, seed=2)
    build_shards([(f"d{i}", d) for i, d in enumerate(docs)], root, train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[32], valid_fraction=0.05))
    return root


@pytest.fixture(autouse=True)
def one_process_and_backend_restored(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "BIOPTIMUS_KERNELS"):
        monkeypatch.delenv(key, raising=False)
    before = dispatch.get_backend()
    yield
    dispatch.set_backend(before)


def args(shards: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs/tiny_demo.toml"), f"--data.shards={shards}", "--seq_len=32",
            "--steps=4", "--batch.micro=2", "--logging.interval=1", "--eval.interval=0", f"--out_dir={out_dir}", *extra]


def _losses(out_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def test_fused_forced_where_triton_cannot_run_stops_before_writing(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(args(shards, out, "--model.kernels=fused"))
    message = str(exc.value.code)
    assert message.startswith("error: model.kernels: 'fused' cannot run here") and "\n" not in message
    assert not out.exists()


def test_unknown_backend_in_the_environment_is_named(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOPTIMUS_KERNELS", "triton")
    with pytest.raises(SystemExit) as exc:
        main(args(shards, tmp_path / "run"))
    assert str(exc.value.code).startswith("error: BIOPTIMUS_KERNELS: 'triton' is not one of")


@requires_triton
@pytest.mark.slow
def test_training_with_fused_kernels_logs_the_choices_and_matches_the_reference(shards, tmp_path, capsys):
    main(args(shards, tmp_path / "ref", NO_DROPOUT))
    assert "residual_layer_norm -> residual_layer_norm_ref" in capsys.readouterr().out
    dispatch._logged.clear()
    main(args(shards, tmp_path / "auto", NO_DROPOUT, "--model.kernels=auto"))
    shown = capsys.readouterr().out
    assert "residual_layer_norm -> triton residual_layer_norm" in shown and "bias_gelu -> " in shown
    ref, fused = _losses(tmp_path / "ref"), _losses(tmp_path / "auto")
    assert len(ref) == len(fused) == 4
    assert all(abs(a - b) < 1e-4 for a, b in zip(ref, fused)), (ref, fused)
