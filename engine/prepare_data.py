"""Turn a raw text corpus into packed, memory-mapped training shards (one set per sequence length).

    # adopt PubMedBERT's vocabulary, shards for a 128 → 512 curriculum
    python engine/prepare_data.py --corpus ../shared/data/corpus/pmc_rct_fulltext --out data/pmc \\
        --vocab ../shared/data/vocab/pubmed-uncased-abstracts-vocab.txt --seq-len 128 512
    # train a 30k WordPiece vocabulary on the corpus first
    python engine/prepare_data.py --corpus pubmed_baseline/ --out data/pubmed --vocab-size 30522 --workers 16

The corpus is a folder of .txt files (document = file), JSONL with a `text` field, or PubMed
baseline XML (.xml/.xml.gz). The output folder holds manifest.json, tokenizer.json (loadable by
`transformers.AutoTokenizer`) and the shards read by `engine.shards.PackedShards`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from engine.config import ConfigError, from_dict
from engine.corpus.readers import FORMATS, CorpusError, corpus_files, iter_documents
from engine.shards.build import ShardOptions, build_shards, check_destination
from engine.shards.manifest import ShardError
from engine.shards.vocab import VocabError, read_vocab_file, train_vocab


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path,
                        help="corpus file or folder (.txt files, .jsonl[.gz], PubMed .xml[.gz])")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="corpus format; auto decides per file from its name (default: auto)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output shard folder (built in a temporary folder, renamed at the end)")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", type=Path, help="existing WordPiece vocab.txt to adopt (one token per line)")
    vocab.add_argument("--vocab-size", type=int, help="train a WordPiece vocabulary of this size on the corpus")
    parser.add_argument("--min-frequency", type=int, default=2,
                        help="vocabulary training: least count of a merged pair (default: 2)")
    parser.add_argument("--seq-len", type=int, nargs="+", default=[128],
                        help="sequence length(s); one packed set per length (default: 128)")
    parser.add_argument("--valid-fraction", type=float, default=0.01,
                        help="share of documents held out for validation, by hash of id (default: 0.01)")
    parser.add_argument("--cased", action="store_true",
                        help="keep case and accents (cased vocabulary); default lower-cases as BERT uncased")
    parser.add_argument("--pack-buffer", type=int, default=4096,
                        help="segments buffered for best-fit packing; more = fuller rows, more memory (default: 4096)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="tokenizer threads (default: all cores); does not change the output")
    parser.add_argument("--batch-documents", type=int, default=64,
                        help="documents per tokenizer call (default: 64); does not change the output")
    parser.add_argument("--overwrite", action="store_true", help="replace different shards already in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


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
    print(f"documents {corpus['documents']:,} (train {manifest['splits']['train']['documents']:,}, "
          f"valid {manifest['splits']['valid']['documents']:,}); tokens {corpus['tokens']:,}; "
          f"{elapsed:.1f} s, {corpus['tokens'] / max(elapsed, 1e-9):,.0f} tokens/s")
    for seq_len, sets in sorted(manifest["sets"].items(), key=lambda kv: int(kv[0])):
        for split, info in sets.items():
            print(f"seq {seq_len} {split}: {info['rows']:,} sequences, {info['segments']:,} segments, "
                  f"packing efficiency {info['packing_efficiency']:.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        options = from_dict(ShardOptions, {"seq_lens": args.seq_len, "valid_fraction": args.valid_fraction,
                                           "lowercase": not args.cased, "pack_buffer": args.pack_buffer})
        if args.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {args.workers}")
        corpus_files(args.corpus, args.format)
        check_destination(args.out, None, options, args.overwrite)
        if args.vocab is not None:
            tokenizer = read_vocab_file(args.vocab, options.lowercase)
        else:
            if not args.quiet:
                print(f"training a {args.vocab_size:,}-entry WordPiece vocabulary on {args.corpus}", file=sys.stderr)
            tokenizer = train_vocab((text for _, text in iter_documents(args.corpus, args.format)),
                                    args.vocab_size, options.lowercase, args.min_frequency)
        bar, on_file_done, on_batch = make_progress(args.corpus, args.format, args.quiet)
        with bar:
            documents = iter_documents(args.corpus, args.format, on_file_done=on_file_done)
            result = build_shards(documents, args.out, tokenizer, options, workers=args.workers,
                                  overwrite=args.overwrite, batch_documents=args.batch_documents,
                                  progress=on_batch)
    except (CorpusError, VocabError, ShardError, ConfigError) as exc:
        sys.exit(f"error: {exc}")
    print_summary(result, args.out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
