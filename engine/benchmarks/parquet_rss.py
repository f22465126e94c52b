"""Peak memory of `prepare_data.py` on a Parquet corpus and on one twice as large (streaming keeps it flat).

    python engine/benchmark.py parquet_rss --corpus ../shared/data/corpus/pmc_rct_fulltext --limit-mb 10 \\
        --out bench/parquet_rss.json

The first `--limit-mb` MB of the corpus are written as a Parquet file (`id`, `text`, row groups of
`--row-group-rows` rows) and again repeated twice (ids made unique). Each file is then built into
shards by `engine.prepare_data.main` in a fresh child process whose peak RSS (VmHWM) is the build's
memory. The alternative a user would write, `pyarrow.parquet.read_table` of the text column (then
iterate it), is measured the same way on both files: its memory grows with the file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.benchmarks.data import SHARED, select_documents
from engine.record import write_record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "pmc_rct_fulltext",
                        help="corpus the Parquet files are made from (default: the shared PMC corpus)")
    parser.add_argument("--limit-mb", type=float, default=10.0, help="MB of text in the 1x file (default: 10)")
    parser.add_argument("--row-group-rows", type=int, default=64,
                        help="rows per Parquet row group (default: 64, ~1.6 MB of PMC full text)")
    parser.add_argument("--vocab", type=Path, default=SHARED / "vocab" / "pubmed-uncased-abstracts-vocab.txt",
                        help="vocab.txt adopted by the builds (default: PubMedBERT's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="tokenizer threads")
    parser.add_argument("--out", type=Path, default=Path("bench/parquet_rss.json"), help="JSON record to write")


def write_parquet(docs: list[tuple[str, str]], copies: int, path: Path, row_group_rows: int) -> float:
    """`docs` repeated `copies` times as an (id, text) Parquet file; returns its size in MB."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    ids = [doc_id if copy == 0 else f"{doc_id}#{copy}" for copy in range(copies) for doc_id, _ in docs]
    texts = [text for _ in range(copies) for _, text in docs]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=row_group_rows)
    return path.stat().st_size / 1e6


def _child(code: str, workers: int) -> dict:
    """Run `code` in a fresh interpreter; its last stdout line is a JSON object with `peak_rss_mb`."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(workers), "RAYON_RS_NUM_CPUS": str(workers)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_data_rss(parquet: Path, out: Path, vocab: Path, workers: int) -> dict:
    argv = ["--corpus", str(parquet), "--out", str(out), "--vocab", str(vocab), "--id-field", "id",
            "--seq-len", "128", "--workers", str(workers), "--quiet"]
    return _child("import json; from engine.prepare_data import main; from engine.benchmarks.data import peak_rss_mb; "
                  f"main({argv!r}); print(json.dumps({{'peak_rss_mb': peak_rss_mb(), "
                  f"'documents': json.load(open({str(out / 'manifest.json')!r}))['corpus']['documents']}}))", workers)


def read_table_rss(parquet: Path, workers: int) -> dict:
    return _child("import json; import pyarrow.parquet as pq; from engine.benchmarks.data import peak_rss_mb; "
                  f"t = pq.read_table({str(parquet)!r}, columns=['text']); "
                  "n = sum(1 for s in t.column('text').to_pylist() if s.strip()); "
                  "print(json.dumps({'peak_rss_mb': peak_rss_mb(), 'documents': n}))", workers)


def run(args: argparse.Namespace) -> dict:
    docs = select_documents(args.corpus, args.limit_mb)
    figures: dict = {"documents_1x": len(docs)}
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as tmp:
        for copies in (1, 2):
            parquet = Path(tmp) / f"corpus_{copies}x.parquet"
            figures[f"parquet_mb_{copies}x"] = write_parquet(docs, copies, parquet, args.row_group_rows)
            build = prepare_data_rss(parquet, Path(tmp) / f"shards_{copies}x", args.vocab, args.workers)
            if build["documents"] != copies * len(docs):
                raise RuntimeError(f"{copies}x build read {build['documents']} documents, expected {copies * len(docs)}")
            figures[f"prepare_data_peak_rss_mb_{copies}x"] = build["peak_rss_mb"]
            figures[f"read_table_peak_rss_mb_{copies}x"] = read_table_rss(parquet, args.workers)["peak_rss_mb"]
    figures["prepare_data_rss_growth_2x"] = figures["prepare_data_peak_rss_mb_2x"] / figures["prepare_data_peak_rss_mb_1x"] - 1
    figures["read_table_rss_growth_2x"] = figures["read_table_peak_rss_mb_2x"] / figures["read_table_peak_rss_mb_1x"] - 1
    config = {"corpus": str(args.corpus), "limit_mb": args.limit_mb, "row_group_rows": args.row_group_rows,
              "vocab": str(args.vocab), "workers": args.workers, "seq_len": 128}
    write_record(args.out, "parquet_rss", figures, config)
    return figures
