"""The masking benchmark runs end to end on a tiny configuration and writes every promised key."""
from __future__ import annotations

import argparse
import json

from engine.benchmarks import masking


def test_masking_benchmark_writes_throughputs_and_baseline(tmp_path):
    parser = argparse.ArgumentParser()
    masking.add_arguments(parser)
    out = tmp_path / "masking.json"
    args = parser.parse_args(["--out", str(out), "--batch-size", "16", "--batches", "2", "--repeats", "1",
                              "--rows", "200", "--skip-step"])
    masking.run(args)
    record = json.loads(out.read_text())
    for key in ("masking_tokens_per_s_token", "masking_tokens_per_s_wwm", "masking_only_tokens_per_s_wwm",
                "baseline_tokens_per_s", "micro_batch_masking_seconds"):
        assert record[key] > 0, key
    assert record["masking_tokens_per_s"] == min(record["masking_tokens_per_s_token"],
                                                 record["masking_tokens_per_s_wwm"])
    assert "masking_share" not in record and record["config"]["masking_threads"] == 1
