"""Turn a raw text corpus into packed, memory-mapped training shards (one set per sequence length).

    # adopt PubMedBERT's vocabulary, shards for a 128 → 512 curriculum
    python engine/prepare_data.py --corpus ../shared/data/corpus/pmc_rct_fulltext --out data/pmc \\
        --vocab ../shared/data/vocab/pubmed-uncased-abstracts-vocab.txt --seq-len 128 512
    # train a 30k WordPiece vocabulary on the corpus first
    python engine/prepare_data.py --corpus pubmed_baseline/ --out data/pubmed --vocab-size 30522 --workers 16

    # a Parquet export (or CSV/TSV) with title and abstract columns, id from the pmid column
    python engine/prepare_data.py --corpus pubmed.parquet --text-field title,abstract --id-field pmid \\
        --out data/pubmed --vocab ../shared/data/vocab/pubmed-uncased-abstracts-vocab.txt

The corpus is a folder of .txt files (document = file), JSONL with a `text` field, PubMed
baseline XML (.xml/.xml.gz), or Parquet / CSV / TSV (document = row, header row for CSV/TSV).
The output folder holds manifest.json, tokenizer.json (loadable by
`transformers.AutoTokenizer`) and the shards read by `engine.shards.PackedShards`.

Killed at any point (preemption, SIGKILL, Ctrl-C) and run again with the same arguments, it
continues from its last checkpoint in `.{out}.building` and writes the same bytes as an
uninterrupted run; the documents already done are re-read but not tokenised again.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from engine.cli import CONFIG_FILE, Flag, parse_config, print_config, save_config
from engine.config import ConfigError
from engine.corpus.readers import FORMATS, CorpusError, corpus_files, iter_documents
from engine.corpus.tabular import TableFields
from engine.shards.build import ShardOptions, build_shards, check_destination
from engine.shards.manifest import ShardError
from engine.shards.vocab import VocabError, read_vocab_file, train_vocab


@dataclass
class PrepareConfig:
    """What `engine/prepare_data.py` reads: corpus, vocabulary source, shard options, throughput knobs."""

    corpus: Path  # corpus file or folder (.txt files, .jsonl[.gz], PubMed .xml[.gz], .parquet, .csv, .tsv)
    out: Path  # output shard folder (built in a temporary folder, renamed at the end)
    format: Literal[FORMATS] = "auto"  # corpus format; auto decides per file from its name
    text_field: list[str] = field(default_factory=lambda: ["text"])  # Parquet/CSV/TSV: text column(s), newline-joined
    id_field: str | None = None  # Parquet/CSV/TSV: document id column (default: <file name>:<row>)
    vocab: Path | None = None  # existing WordPiece vocab.txt to adopt (one token per line)
    vocab_size: int | None = None  # train a WordPiece vocabulary of this size on the corpus
    min_frequency: int = 2  # vocabulary training: least count of a merged pair
    shards: ShardOptions = field(default_factory=ShardOptions)  # what shapes the shard files (kept in the manifest)
    workers: int = field(default_factory=os.cpu_count)  # tokenizer threads; does not change the output
    batch_documents: int = 64  # documents per tokenizer call; does not change the output
    checkpoint_tokens: int = 1_000_000  # checkpoint the build this often (tokens) so that a re-run after a kill continues from there; does not change the output
    overwrite: bool = False  # replace different shards already in out
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        if (self.vocab is None) == (self.vocab_size is None):
            raise ValueError("give exactly one of --vocab (adopt a vocab.txt) and --vocab-size (train one)")
        for name in ("vocab_size", "min_frequency", "workers", "batch_documents", "checkpoint_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


FLAGS = [
    Flag("--vocab-size", "vocab_size"),
    Flag("--min-frequency", "min_frequency"),
    Flag("--seq-len", "shards.seq_lens", many=True),
    Flag("--valid-fraction", "shards.valid_fraction"),
    Flag("--cased", "shards.lowercase", value=False),
    Flag("--pack-buffer", "shards.pack_buffer"),
    Flag("--batch-documents", "batch_documents"),
    Flag("--text-field", "text_field"),
    Flag("--id-field", "id_field"),
    Flag("--checkpoint-tokens", "checkpoint_tokens"),
]


def parse_args(argv: list[str] | None) -> PrepareConfig:
    return parse_config(PrepareConfig, argv, __doc__, FLAGS)


def make_progress(corpus: Path, fmt: str, quiet: bool):
    """A byte-based tqdm bar (gives the ETA) with docs/s and tokens/s alongside."""
    sizes = {file: file.stat().st_size for file, _ in corpus_files(corpus, fmt)}
    bar = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, disable=quiet, desc="shards")
    counts = {"docs": 0, "tokens": 0, "start": time.perf_counter()}

    def on_batch(docs: int, tokens: int) -> None:
        counts["docs"] += docs
        counts["tokens"] += tokens
        elapsed = max(time.perf_counter() - counts["start"], 1e-9)
        bar.set_postfix_str(f"{counts['docs'] / elapsed:,.0f} docs/s, {counts['tokens'] / elapsed:,.0f} tokens/s",
                            refresh=False)

    return bar, (lambda file: bar.update(sizes[file])), on_batch


def print_summary(result, out: Path, elapsed: float) -> None:
    manifest = result.manifest
    corpus = manifest["corpus"]
    print(f"{result.status}: {out} (vocabulary {manifest['tokenizer']['vocab_size']:,} entries)")
    if result.resumed_documents:
        print(f"resumed an interrupted build: {result.resumed_documents:,} documents reused from its checkpoint")
    print(f"documents {corpus['documents']:,} (train {manifest['splits']['train']['documents']:,}, "
          f"valid {manifest['splits']['valid']['documents']:,}); tokens {corpus['tokens']:,}; "
          f"{elapsed:.1f} s, {corpus['tokens'] / max(elapsed, 1e-9):,.0f} tokens/s")
    for seq_len, sets in sorted(manifest["sets"].items(), key=lambda kv: int(kv[0])):
        for split, info in sets.items():
            print(f"seq {seq_len} {split}: {info['rows']:,} sequences, {info['segments']:,} segments, "
                  f"packing efficiency {info['packing_efficiency']:.4f}")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    start = time.perf_counter()
    print_config(config, "prepare_data")
    try:
        fields = TableFields.parse(config.text_field, config.id_field)
        corpus_files(config.corpus, config.format)
        if config.corpus.is_dir() and (config.out.resolve() == config.corpus.resolve()
                                       or config.corpus.resolve() in config.out.resolve().parents):
            raise ConfigError(f"--out {config.out} lies inside --corpus {config.corpus}: the next run would read "
                              f"the shards' own files as documents; choose an --out outside the corpus")
        check_destination(config.out, None, config.shards, config.overwrite)
        if config.vocab is not None:
            tokenizer = read_vocab_file(config.vocab, config.shards.lowercase)
        else:
            if not config.quiet:
                print(f"training a {config.vocab_size:,}-entry WordPiece vocabulary on {config.corpus}", file=sys.stderr)
            tokenizer = train_vocab((text for _, text in iter_documents(config.corpus, config.format, fields=fields)),
                                    config.vocab_size, config.shards.lowercase, config.min_frequency)
        bar, on_file_done, on_batch = make_progress(config.corpus, config.format, config.quiet)
        with bar:
            documents = iter_documents(config.corpus, config.format, fields=fields, on_file_done=on_file_done)
            result = build_shards(documents, config.out, tokenizer, config.shards, workers=config.workers,
                                  overwrite=config.overwrite, batch_documents=config.batch_documents,
                                  progress=on_batch, checkpoint_tokens=config.checkpoint_tokens)
    except (CorpusError, VocabError, ShardError, ConfigError) as exc:
        sys.exit(f"error: {exc}")
    save_config(config, config.out / CONFIG_FILE)
    print_summary(result, config.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
