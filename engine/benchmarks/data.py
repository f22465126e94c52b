"""Shard build throughput vs raw `tokenizers` and vs HF `datasets` (run_mlm.py), RSS, random access.

    flock /tmp/bioptimus-heavy.lock python engine/benchmark.py data \\
        --corpus ../shared/data/corpus/pmc_rct_fulltext --out bench/data.json [--limit-mb 20]

All three pipelines tokenise the same documents with the same tokenizer on the same cores, in one
run; tokens/s is always the same content-token count (no [CLS]/[SEP]) over each pipeline's time:
- build: `engine.shards.build_shards` end to end (read files, tokenise, pack, write, checksum),
  in a fresh child process whose peak RSS (VmHWM) is the build's memory; run again on the
  corpus repeated `--scale` times (ids made unique) to show that memory does not grow with it;
- raw: `Tokenizer.encode_batch` and `encode_batch_fast` over the texts already in memory
  (`ratio_vs_raw` uses the faster of the two). The build can beat it: it normalises text with
  `engine.corpus.normalize.FastNormalizer` (exact, same ids) instead of the tokenizer's
  alignment-tracking normaliser, which is ~45 % of `encode_batch_fast`'s time;
- HF: `load_dataset("text")` + `map(tokenize_function)` + `map(group_texts)` exactly as
  transformers' `examples/pytorch/language-modeling/run_mlm.py` (no line_by_line), num_proc=workers.
`random_batch_ms`: mean time of `PackedShards.get_batch` for 256 random rows of 128 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import numpy as np

from engine.record import write_record
from engine.io import shared_data_dir

SHARED = shared_data_dir()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "pmc_rct_fulltext",
                        help="corpus to build from (default: the shared PMC corpus)")
    parser.add_argument("--out", type=Path, default=Path("bench/data.json"), help="JSON record to write")
    parser.add_argument("--limit-mb", type=float, default=None,
                        help="use only the first N MB of document text (quick runs); default: whole corpus")
    parser.add_argument("--vocab", type=Path, default=SHARED / "vocab" / "pubmed-uncased-abstracts-vocab.txt",
                        help="vocab.txt for all pipelines (default: PubMedBERT's)")
    parser.add_argument("--seq-len", type=int, default=128, help="packed sequence length (default: 128)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="threads/processes for every pipeline")
    parser.add_argument("--scale", type=int, default=4, help="corpus multiple for the RSS-flatness build (default: 4)")
    parser.add_argument("--batches", type=int, default=2000, help="random batches timed for random_batch_ms")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the (slow) HF datasets baseline")


def select_documents(corpus: Path, limit_mb: float | None) -> list[tuple[str, str]]:
    """The corpus's documents in order, stopping once `limit_mb` MB of UTF-8 text are taken."""
    from engine.corpus.readers import iter_documents
    limit = None if limit_mb is None else int(limit_mb * 1e6)
    docs, size = [], 0
    for doc_id, text in iter_documents(corpus):
        if limit is not None and size >= limit:
            break
        docs.append((doc_id, text))
        size += len(text.encode("utf-8"))
    return docs


def _child_build(spec: dict) -> None:
    """In a fresh process: stream the selected documents (`scale` times) into shards; print figures."""
    from engine.corpus.readers import iter_documents
    from engine.shards import ShardOptions, build_shards, read_vocab_file
    limit = None if spec["limit_mb"] is None else int(spec["limit_mb"] * 1e6)

    def documents():
        for copy in range(spec["scale"]):
            size = 0
            for doc_id, text in iter_documents(spec["corpus"]):
                if limit is not None and size >= limit:
                    break
                size += len(text.encode("utf-8"))
                yield (doc_id if copy == 0 else f"{doc_id}#{copy}"), text

    tokenizer = read_vocab_file(spec["vocab"])
    start = time.perf_counter()
    result = build_shards(documents(), spec["out"], tokenizer, ShardOptions(seq_lens=[spec["seq_len"]]),
                          workers=spec["workers"])
    seconds = time.perf_counter() - start
    info = result.manifest["sets"][str(spec["seq_len"])]["train"]
    print(json.dumps({"seconds": seconds, "tokens": result.manifest["corpus"]["tokens"],
                      "packing_efficiency": info["packing_efficiency"], "rows": info["rows"],
                      "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux's VmHWM belongs to the current address space only; `ru_maxrss` (also from `wait4`) keeps
    the high-water mark from before `exec`, i.e. the parent's memory when the child was forked.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)


def run_build(spec: dict) -> dict:
    """Run `_child_build` in a fresh child process (its memory is the build's alone)."""
    code = ("import json; from engine.benchmarks.data import _child_build; "
            f"_child_build(json.loads({json.dumps(json.dumps(spec))}))")
    env = {**os.environ, "RAYON_NUM_THREADS": str(spec["workers"]), "RAYON_RS_NUM_CPUS": str(spec["workers"])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"build child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_raw_encode(tokenizer, texts: list[str], method: str, batch: int = 64) -> tuple[float, int]:
    encode = getattr(tokenizer, method)
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        tokens += sum(len(e.ids) for e in encode(texts[i:i + batch], add_special_tokens=False))
    return time.perf_counter() - start, tokens


def time_hf_datasets(texts: list[str], tokenizer_dir: Path, seq_len: int, workers: int) -> float:
    """Seconds for run_mlm.py's pipeline: load_dataset("text") + tokenize map + group_texts map."""
    import datasets
    from transformers import AutoTokenizer
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        start = time.perf_counter()
        raw = datasets.load_dataset("text", data_files={"train": str(corpus)}, cache_dir=str(Path(tmp) / "cache"))

        def tokenize_function(examples):
            return tokenizer(examples["text"], return_special_tokens_mask=True)

        tokenized = raw.map(tokenize_function, batched=True, num_proc=workers, remove_columns=["text"])

        def group_texts(examples):
            concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
            total_length = len(concatenated[list(examples.keys())[0]])
            total_length = (total_length // seq_len) * seq_len
            return {k: [t[i:i + seq_len] for i in range(0, total_length, seq_len)] for k, t in concatenated.items()}

        grouped = tokenized.map(group_texts, batched=True, num_proc=workers)
        seconds = time.perf_counter() - start
        assert len(grouped["train"]) > 0
    return seconds


def time_random_batches(root: Path, seq_len: int, batches: int, batch_size: int = 256) -> tuple[float, float]:
    """(ms per get_batch with ids + word_start + segment_ids, ms per bare memmap gather of ids)."""
    from engine.shards import PackedShards
    shards = PackedShards(root, "train", seq_len)
    rng = np.random.default_rng(0)
    picks = [rng.integers(0, len(shards), size=batch_size) for _ in range(batches)]
    for indices in picks[:50]:
        shards.get_batch(indices)
    start = time.perf_counter()
    for indices in picks:
        shards.get_batch(indices)
    full = (time.perf_counter() - start) / batches * 1e3
    ids = np.memmap(root / f"seq{seq_len}" / "train.ids.bin", dtype=shards.manifest["tokenizer"]["ids_dtype"],
                    mode="r", shape=(len(shards), seq_len))
    start = time.perf_counter()
    for indices in picks:
        ids[indices]
    bare = (time.perf_counter() - start) / batches * 1e3
    return full, bare


def run(args: argparse.Namespace) -> dict:
    os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(args.workers)
    from engine.shards import read_vocab_file
    from engine.shards.vocab import save_tokenizer

    tokenizer = read_vocab_file(args.vocab)
    docs = select_documents(args.corpus, args.limit_mb)
    texts = [text for _, text in docs]
    text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    figures: dict = {"documents": len(docs), "text_mb": round(text_mb, 2)}

    raw_seconds, tokens = time_raw_encode(tokenizer, texts, "encode_batch")
    fast_seconds, _ = time_raw_encode(tokenizer, texts, "encode_batch_fast")
    figures["tokens"] = tokens
    figures["raw_encode_tokens_per_s"] = tokens / raw_seconds
    figures["raw_encode_fast_tokens_per_s"] = tokens / fast_seconds

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        spec = {"corpus": str(args.corpus), "limit_mb": args.limit_mb, "vocab": str(args.vocab),
                "seq_len": args.seq_len, "workers": args.workers, "scale": 1, "out": str(Path(tmp) / "x1")}
        build = run_build(spec)
        if build["tokens"] != tokens:
            raise RuntimeError(f"build saw {build['tokens']} tokens, raw encode {tokens}: not the same text")
        figures["build_tokens_per_s"] = tokens / build["seconds"]
        figures["build_seconds"] = build["seconds"]
        figures["packing_efficiency"] = build["packing_efficiency"]
        figures["peak_rss_mb"] = build["peak_rss_mb"]
        figures["random_batch_ms"], figures["bare_ids_gather_ms"] = time_random_batches(
            Path(spec["out"]), args.seq_len, args.batches)
        save_tokenizer(tokenizer, Path(tmp) / "tokenizer")
        if args.scale > 1:
            scaled = run_build({**spec, "scale": args.scale, "out": str(Path(tmp) / f"x{args.scale}")})
            figures[f"peak_rss_mb_{args.scale}x"] = scaled["peak_rss_mb"]
            figures[f"rss_growth_{args.scale}x"] = scaled["peak_rss_mb"] / build["peak_rss_mb"] - 1.0
            figures[f"build_tokens_per_s_{args.scale}x"] = scaled["tokens"] / scaled["seconds"]
        if not args.skip_hf:
            hf_seconds = time_hf_datasets(texts, Path(tmp) / "tokenizer", args.seq_len, args.workers)
            figures["hf_datasets_tokens_per_s"] = tokens / hf_seconds
    figures["ratio_vs_raw"] = figures["build_tokens_per_s"] / max(figures["raw_encode_tokens_per_s"],
                                                                 figures["raw_encode_fast_tokens_per_s"])
    if "hf_datasets_tokens_per_s" in figures:
        figures["ratio_vs_hf"] = figures["build_tokens_per_s"] / figures["hf_datasets_tokens_per_s"]
    config = {"corpus": str(args.corpus), "limit_mb": args.limit_mb, "vocab": str(args.vocab),
              "seq_len": args.seq_len, "workers": args.workers, "scale": args.scale, "batches": args.batches,
              "raw_batch_documents": 64, "ratio_vs_raw_against": "faster of encode_batch / encode_batch_fast"}
    write_record(args.out, "data", figures, config)
    return figures
