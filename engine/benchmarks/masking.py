"""Masking throughput (batch assembly + masking, one core) and its share of a BERT-base step on CPU.

    flock /tmp/bioptimus-heavy.lock python engine/benchmark.py masking --out bench/masking.json
    python engine/benchmark.py masking --shards data/pmc --out bench/masking.json   # real shards

Figures:
- `masking_tokens_per_s_token` / `_wwm`: rows from the sampler's global order, gathered from the
  shard set (`get_batch`) and masked by `engine.curriculum.mask_batch` (15 %, 80/10/10), 256 × 128
  per batch, `torch.set_num_threads(1)`; `masking_tokens_per_s` is the smaller of the two.
- `masking_only_tokens_per_s_token` / `_wwm`: `mask_batch` alone on pre-assembled int64 batches.
- `baseline_tokens_per_s`: the plain vectorised torch masking of `transformers`'
  `DataCollatorForLanguageModeling.torch_mask_tokens` (Bernoulli token masking, 80/10/10) run by
  transformers itself on the same already-assembled int64 batches, same core, same run.
- `masking_share`: (assembly + masking of one training micro-batch) / (forward + backward of a
  BERT-base `engine.bert.BertForMaskedLM` on that micro-batch, all cores), seq 128.
Without `--shards`, rows come from `engine.benchmarks.synthetic` (the `PackedShards` layout, in
memory); the record says which.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.record import write_record
from engine.curriculum.masking import MaskingSpec, make_masking_vocab, mask_batch, mask_seed
from engine.curriculum.sampler import GlobalOrder
from engine.benchmarks.synthetic import SyntheticBatch, SyntheticShards
from engine.shards import PackedShards, ShardError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bench/masking.json"), help="JSON record to write")
    parser.add_argument("--shards", type=Path, default=None, help="real shard folder (default: synthetic rows)")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length of the batches")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per batch for the throughput figures")
    parser.add_argument("--batches", type=int, default=100, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--rows", type=int, default=20000, help="synthetic rows to draw batches from")
    parser.add_argument("--step-micro-batch", type=int, default=16, help="micro-batch of the BERT-base step")
    parser.add_argument("--step-repeats", type=int, default=3, help="timed BERT-base steps (after one warm-up)")
    parser.add_argument("--skip-step", action="store_true", help="skip the BERT-base step (no masking_share)")


def _open_rows(args):
    """The shard set to read (real or synthetic) and a one-line description; bad input exits in one line."""
    for name in ("seq_len", "batch_size", "batches", "repeats", "rows", "step_micro_batch", "step_repeats"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.shards is None:
        return SyntheticShards(args.rows, args.seq_len, seed=0), "synthetic (engine.benchmarks.synthetic)"
    try:
        return PackedShards(args.shards, split="train", seq_len=args.seq_len), str(args.shards)
    except ShardError as exc:
        sys.exit(f"error: {exc}")


def _median_rate(run_once, tokens: int, repeats: int) -> float:
    run_once()  # warm-up: page cache, allocator, permutation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return tokens / statistics.median(times)


def engine_throughput(shards, vocab, unit: str, batch_size: int, batches: int, repeats: int,
                      preassembled: bool = False) -> float:
    """Tokens/s of sampler rows + get_batch + mask_batch on the calling thread (only mask_batch when
    `preassembled`: the same int64 batches the baseline gets)."""
    order = GlobalOrder(seed=0, seq_len=shards.seq_len, num_rows=len(shards))
    spec = MaskingSpec(unit=unit, rate=0.15)
    ready = [SyntheticBatch(*(torch.from_numpy(a.astype(np.int64)) for a in shards.get_batch(order.rows(i * batch_size, batch_size))))
             for i in range(8)] if preassembled else []

    def run_once():
        for step in range(batches):
            batch = ready[step % len(ready)] if preassembled else shards.get_batch(order.rows(step * batch_size, batch_size))
            mask_batch(batch, spec, mask_seed(0, step, 0, 0), vocab)

    return _median_rate(run_once, batches * batch_size * shards.seq_len, repeats)


def hf_collator(vocab_size: int, special_ids: dict[str, int], vocab_file: Path | None, workdir: Path):
    """transformers' DataCollatorForLanguageModeling over the same vocabulary (size and special ids).

    With real shards their vocab.txt is used; otherwise a placeholder vocabulary of the same size with
    the special tokens at the same ids (the collator only reads the [MASK] id, specials and size).
    """
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    if vocab_file is None:
        names = {idx: f"[{name.upper()}]" for name, idx in special_ids.items()}
        vocab_file = workdir / "vocab.txt"
        vocab_file.write_text("\n".join(names.get(i, f"tok{i}") for i in range(vocab_size)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file))
    return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15, return_tensors="pt")


def baseline_throughput(collator, shards, special_ids, batch_size: int, batches: int, repeats: int) -> float:
    """Tokens/s of transformers' vectorised torch masking on pre-assembled int64 batches."""
    order = GlobalOrder(seed=0, seq_len=shards.seq_len, num_rows=len(shards))
    specials = torch.tensor(sorted(special_ids.values()))
    inputs = []
    for step in range(min(batches, 8)):
        ids = torch.from_numpy(shards.get_batch(order.rows(step * batch_size, batch_size)).ids.astype(np.int64))
        inputs.append((ids, torch.isin(ids, specials)))

    def run_once():
        for step in range(batches):
            ids, special_mask = inputs[step % len(inputs)]
            collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special_mask)

    return _median_rate(run_once, batches * batch_size * shards.seq_len, repeats)


def bert_base_step_seconds(micro_batch, vocab_size: int, repeats: int) -> float:
    """Median seconds of forward + backward of BERT-base (engine.bert) on one masked micro-batch."""
    from engine.bert import BertForMaskedLM, preset

    model = BertForMaskedLM(preset("bert-base", vocab_size=vocab_size))
    model.train()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out = model(input_ids=micro_batch.input_ids, segment_ids=micro_batch.segment_ids, labels=micro_batch.labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    shards, source = _open_rows(args)
    vocab_file = Path(args.shards) / "vocab.txt" if args.shards is not None else None
    vocab = make_masking_vocab(shards.vocab_size, shards.special_ids, vocab_file=vocab_file)
    all_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        figures = {
            f"masking_tokens_per_s_{name}": engine_throughput(shards, vocab, unit, args.batch_size, args.batches,
                                                              args.repeats)
            for name, unit in (("token", "token"), ("wwm", "word"))
        }
        figures["masking_tokens_per_s"] = min(figures.values())
        for name, unit in (("token", "token"), ("wwm", "word")):
            figures[f"masking_only_tokens_per_s_{name}"] = engine_throughput(
                shards, vocab, unit, args.batch_size, args.batches, args.repeats, preassembled=True)
        with tempfile.TemporaryDirectory() as workdir:
            collator = hf_collator(shards.vocab_size, shards.special_ids, vocab_file, Path(workdir))
        figures["baseline_tokens_per_s"] = baseline_throughput(collator, shards, shards.special_ids,
                                                               args.batch_size, args.batches, args.repeats)
        # One training micro-batch: assembly + WWM masking (the dearer unit) on one core.
        order = GlobalOrder(seed=1, seq_len=shards.seq_len, num_rows=len(shards))
        wwm = MaskingSpec(unit="word", rate=0.15)

        def one_micro_batch(step=0):
            rows = order.rows(step * args.step_micro_batch, args.step_micro_batch)
            return mask_batch(shards.get_batch(rows), wwm, mask_seed(1, step, 0, 0), vocab)

        micro_seconds = args.step_micro_batch * shards.seq_len / _median_rate(
            lambda: [one_micro_batch(s) for s in range(50)], 50 * args.step_micro_batch * shards.seq_len,
            args.repeats)
    finally:
        torch.set_num_threads(all_threads)
    step_seconds = None
    if not args.skip_step:
        step_seconds = bert_base_step_seconds(one_micro_batch(), shards.vocab_size, args.step_repeats)
        figures["masking_share"] = micro_seconds / step_seconds
    figures["micro_batch_masking_seconds"] = micro_seconds
    figures["bert_base_step_seconds"] = step_seconds
    config = {"source": source, "seq_len": args.seq_len, "batch_size": args.batch_size, "batches": args.batches,
              "repeats": args.repeats, "rate": 0.15, "corruption": [0.8, 0.1, 0.1], "masking_threads": 1,
              "baseline": "transformers DataCollatorForLanguageModeling.torch_mask_tokens (masking only, "
                          "int64 input, special-token mask given)",
              "step_model": "engine.bert.BertForMaskedLM preset bert-base, packed path, fp32, forward + backward",
              "step_micro_batch": args.step_micro_batch, "step_threads": all_threads}
    write_record(args.out, "masking", figures, config)
    return figures
