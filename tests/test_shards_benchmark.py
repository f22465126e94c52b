"""The data benchmark runs end to end on a tiny corpus and records every figure the issue asks for."""
from __future__ import annotations

import argparse
import json

from engine.benchmarks import data
from engine.corpus.demo import demo_documents, write_demo_corpus
from engine.shards.vocab import train_vocab, vocab_list

KEYS = ["build_tokens_per_s", "raw_encode_tokens_per_s", "hf_datasets_tokens_per_s", "ratio_vs_raw",
        "ratio_vs_hf", "peak_rss_mb", "packing_efficiency", "random_batch_ms", "peak_rss_mb_2x"]


def test_benchmark_writes_all_figures_for_the_same_text(tmp_path):
    corpus = write_demo_corpus(tmp_path / "corpus", num_docs=200)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in vocab_list(train_vocab(demo_documents(200), 500))), encoding="utf-8")
    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    args = parser.parse_args(["--corpus", str(corpus), "--out", str(tmp_path / "data.json"), "--vocab", str(vocab),
                              "--limit-mb", "0.1", "--workers", "1", "--scale", "2", "--batches", "20"])
    data.run(args)
    record = json.loads((tmp_path / "data.json").read_text())
    assert all(isinstance(record[key], float) and record[key] > 0 for key in KEYS), record
    assert abs(record["rss_growth_2x"]) < 0.5  # memory does not follow corpus size (may even dip)
    assert 0 < record["documents"] < 200  # --limit-mb took a prefix of the corpus
    assert record["ratio_vs_hf"] == record["build_tokens_per_s"] / record["hf_datasets_tokens_per_s"]
    assert record["machine"]["tokenizers"] and record["config"]["limit_mb"] == 0.1
