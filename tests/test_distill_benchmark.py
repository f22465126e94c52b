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


@pytest.mark.slow  # an in-process DeepSpeed run: ~20 s on a loaded 2-core machine
def test_quality_curve_is_trained_by_the_real_trainer(tmp_path, monkeypatch):
    """pretrain_curve drives engine.training's Trainer: its evaluations are the trainer's `valid`
    records, at step 0 and every eval_every steps, and the held-out loss falls."""
    from engine.corpus.demo import demo_documents
    from engine.shards import ShardOptions, build_shards, read_vocab_file
    from engine.training.metrics import read_metrics
    from tests.tiny_model import write_tiny_bert

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    docs = demo_documents(120, seed=3)
    init_dir = write_tiny_bert(tmp_path / "init-0-random", sorted({w for d in docs for w in d.lower().split()})[:200])
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(init_dir).get_vocab()
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    shards = tmp_path / "shards"
    build_shards([(f"d{i}", d) for i, d in enumerate(docs)], shards, read_vocab_file(tmp_path / "vocab.txt"),
                 ShardOptions(seq_lens=[64], valid_fraction=0.1))
    args = argparse.Namespace(steps=12, batch_size=4, seq_len=64, lr=5e-3, warmup=2, eval_every=4, eval_rows=16,
                              seed=0, device="cpu")
    curve = distill.pretrain_curve(args, init_dir, shards, new_ids=list(range(5, 40)))

    assert [point["step"] for point in curve] == [0, 4, 8, 12]
    assert curve[-1]["loss"] < curve[0]["loss"]
    logged = [(r["step"], r["loss"], r["new_token_loss"])
              for r in read_metrics(init_dir.with_name("init-0-random-pretrain") / "metrics.jsonl") if r["kind"] == "valid"]
    assert logged == [(point["step"], point["loss"], point["new_token_loss"]) for point in curve[1:]]
