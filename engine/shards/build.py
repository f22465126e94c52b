"""Corpus → packed shard folder, streaming, into a temporary folder renamed into place at the end.

Documents are normalised (`FastNormalizer`, exact) and tokenised in batches by `tokenizers` (Rust,
parallel over `workers` threads) on a second thread while the main thread splits them into
train/valid by a hash of their id, cuts and packs them per sequence length, and writes rows as they
come: memory stays flat however large the corpus. The output depends only on the documents, the
tokenizer and `ShardOptions` (never on `workers` or batch size): same input ⇒ byte-identical files.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer

from engine.io import TOKENIZER_FILES, swap_in_folder, temp_sibling_dir
from engine.shards.manifest import FORMAT, MANIFEST, SPLITS, ShardError, manifest_text, read_manifest, verify_files
from engine.shards.packing import Packer
from engine.corpus.normalize import FastNormalizer
from engine.shards.vocab import (save_tokenizer, special_ids, tokenizer_hash, uses_text_normalizer, vocab_list,
                                 without_normalizer)
from engine.shards.writer import DocumentLog, ShardSetWriter


@dataclass
class ShardOptions:
    """Everything that shapes the shard files (stored in the manifest)."""

    seq_lens: list[int] = field(default_factory=lambda: [128])  # one packed set per sequence length
    valid_fraction: float = 0.01  # share of documents held out for validation loss (by id hash)
    lowercase: bool = True  # uncased vocabulary: lower-case and strip accents before WordPiece
    pack_buffer: int = 4096  # segments buffered before best-fit packing (more: fuller rows, more RAM)

    def __post_init__(self):
        if not self.seq_lens:
            raise ValueError("seq_lens: give at least one sequence length")
        if len(set(self.seq_lens)) != len(self.seq_lens):
            raise ValueError(f"seq_lens: repeated value in {self.seq_lens}")
        for seq_len in self.seq_lens:
            if not 8 <= seq_len <= 65536:
                raise ValueError(f"seq_lens: {seq_len} is outside 8..65536")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction: must be in [0, 1), got {self.valid_fraction}")
        if self.pack_buffer < 1:
            raise ValueError(f"pack_buffer: must be positive, got {self.pack_buffer}")
        self.seq_lens = sorted(self.seq_lens)


@dataclass
class BuildResult:
    """What `build_shards` did: `written`, `replaced` or `unchanged` (identical shards already there)."""

    status: str  # "written", "replaced" or "unchanged"
    manifest: dict  # the manifest of the shards now in the output folder


def is_valid_document(doc_id: str, valid_fraction: float) -> bool:
    """Deterministic document-level hold-out: the first 8 bytes of sha256(id) as a fraction."""
    if valid_fraction <= 0.0:
        return False
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < valid_fraction


def _batches(documents: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    batch = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_destination(out: Path, tokenizer: Tokenizer | None, options: ShardOptions, overwrite: bool) -> None:
    """Fail early when `out` holds something other than shards of this tokenizer (when given) and options."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ShardError(f"output path exists and is not a folder: {out}")
    if not any(out.iterdir()):
        return
    if overwrite:
        if not (out / MANIFEST).is_file():
            raise ShardError(f"output folder is not empty and holds no shards; refusing to overwrite: {out}")
        return
    existing, _ = read_manifest(out)
    same_tokenizer = tokenizer is None or existing["tokenizer"]["sha256"] == tokenizer_hash(tokenizer)
    if not same_tokenizer or existing["options"] != asdict(options):
        raise ShardError(f"output folder already holds different shards (other tokenizer or options): {out}; "
                         f"pass --overwrite to replace them")


def _refuse_other_corpus(out: Path, manifest: dict) -> None:
    """Same tokenizer and options but another corpus is still other shards: not replaced silently.
    Known only once the corpus is read (its fingerprint), so this runs after the build, before the swap."""
    try:
        existing, _ = read_manifest(out)
        before = existing["corpus"]["sha256"]
    except (ShardError, KeyError, TypeError):
        return  # damaged or older manifest: check_destination already compared what it could
    if before != manifest["corpus"]["sha256"]:
        raise ShardError(f"{out}: already holds shards of another corpus (corpus sha256 {before[:12]}…, this one "
                         f"{manifest['corpus']['sha256'][:12]}…); pass --overwrite to replace them")


class BatchEncoder:
    """Token ids for a batch of raw texts, equal to `tokenizer.encode(text)` without specials.

    Texts that `FastNormalizer` can normalise exactly are normalised in Python and encoded by a
    copy of the tokenizer without its normaliser (~1.5x faster); the rest go through the tokenizer
    whole. Offsets are not computed (`encode_batch_fast`): the shards do not need them.
    """

    def __init__(self, tokenizer: Tokenizer, lowercase: bool):
        self.tokenizer = tokenizer
        exact = uses_text_normalizer(tokenizer, lowercase)
        self.fast = FastNormalizer(lowercase) if exact else None
        self.bare = without_normalizer(tokenizer) if exact else None

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.fast is None:
            return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        prepared = [self.fast(text) for text in texts]
        easy = [i for i, text in enumerate(prepared) if text is not None]
        hard = [i for i, text in enumerate(prepared) if text is None]
        ids: list[list[int]] = [[] for _ in texts]
        for i, encoding in zip(easy, self.bare.encode_batch_fast([prepared[i] for i in easy],
                                                                 add_special_tokens=False)):
            ids[i] = encoding.ids
        if hard:
            for i, encoding in zip(hard, self.tokenizer.encode_batch_fast([texts[i] for i in hard],
                                                                          add_special_tokens=False)):
                ids[i] = encoding.ids
        return ids


def write_shards(documents: Iterable[tuple[str, str]], root: Path, tokenizer: Tokenizer,
                 options: ShardOptions, batch_documents: int = 64,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Tokenise, pack and write everything into `root` (an empty folder); returns the manifest.

    Long because the writers, packers, document logs and corpus fingerprint are opened, fed by
    the overlapped tokenise/pack loop and closed into the one manifest; split, all four would
    travel between the pieces."""
    save_tokenizer(tokenizer, root, options.lowercase)
    vocab = vocab_list(tokenizer)
    special = special_ids(tokenizer)
    id_dtype = np.dtype(np.uint16 if len(vocab) <= 65535 else np.uint32)
    continuation = np.array([token.startswith("##") for token in vocab], dtype=bool)

    logs = {split: DocumentLog(root, split) for split in SPLITS}
    packers = {(split, L): Packer(L, options.pack_buffer) for split in SPLITS for L in options.seq_lens}
    writers = {(split, L): ShardSetWriter(root, split, L, special, id_dtype)
               for split in SPLITS for L in options.seq_lens}
    fingerprint = hashlib.sha256()

    def add_batch(batch: list[tuple[str, str]], batch_ids: list[list[int]]) -> None:
        tokens = 0
        for (doc_id, text), doc_ids in zip(batch, batch_ids):
            fingerprint.update(doc_id.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
            ids = np.array(doc_ids, dtype=id_dtype)
            if len(ids) == 0:
                continue
            word_start = ~continuation[ids]
            split = "valid" if is_valid_document(doc_id, options.valid_fraction) else "train"
            doc = logs[split].add(doc_id, len(ids))
            for L in options.seq_lens:
                writers[split, L].write(packers[split, L].add_document(doc, ids, word_start))
            tokens += len(ids)
        if progress is not None:
            progress(len(batch), tokens)

    # Tokenise batch k+1 (Rust threads, GIL released) while Python packs and writes batch k.
    encode = BatchEncoder(tokenizer, options.lowercase)
    with ThreadPoolExecutor(max_workers=1) as encoder:
        pending = None
        for batch in _batches(documents, batch_documents):
            future = encoder.submit(encode, [text for _, text in batch])
            if pending is not None:
                add_batch(pending[0], pending[1].result())
            pending = (batch, future)
        if pending is not None:
            add_batch(pending[0], pending[1].result())
    if logs["train"].count + logs["valid"].count == 0:
        raise ShardError("the corpus produced no tokens")

    files: dict[str, dict] = {}
    sets: dict[str, dict] = {str(L): {} for L in options.seq_lens}
    for (split, L), writer in writers.items():
        writer.write(packers[split, L].flush())
        summary, written = writer.close()
        sets[str(L)][split] = summary
        files.update(written)
    splits = {}
    for split, log in logs.items():
        splits[split] = {"documents": log.count, "tokens": log.tokens, "file": log.name}
        files.update(log.close())
    for name in TOKENIZER_FILES:
        data = (root / name).read_bytes()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "format": FORMAT,
        "tokenizer": {"sha256": files["tokenizer.json"]["sha256"], "vocab_size": len(vocab), "special_ids": special,
                      "ids_dtype": id_dtype.name},
        "options": asdict(options),
        "corpus": {"sha256": fingerprint.hexdigest(), "documents": logs["train"].count + logs["valid"].count,
                   "tokens": logs["train"].tokens + logs["valid"].tokens},
        "splits": splits,
        "sets": sets,
        "files": files,
    }
    (root / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")
    return manifest


def build_shards(documents: Iterable[tuple[str, str]], out: str | Path, tokenizer: Tokenizer,
                 options: ShardOptions, workers: int | None = None, overwrite: bool = False,
                 batch_documents: int = 64, progress: Callable[[int, int], None] | None = None) -> BuildResult:
    """Build the shard folder `out` atomically: nothing appears there unless the build completes.

    An `out` already holding identical shards is left untouched (`unchanged`); different shards
    raise ShardError unless `overwrite`.
    """
    out = Path(out)
    if workers is not None:  # read by tokenizers' thread pool when it first starts
        os.environ["RAYON_NUM_THREADS"] = str(workers)
        os.environ["RAYON_RS_NUM_CPUS"] = str(workers)
    check_destination(out, tokenizer, options, overwrite)
    tmp = temp_sibling_dir(out)
    try:
        manifest = write_shards(documents, tmp, tokenizer, options, batch_documents, progress)
        if (out / MANIFEST).is_file() and not overwrite:
            _refuse_other_corpus(out, manifest)
        if (out / MANIFEST).is_file() and (out / MANIFEST).read_text(encoding="utf-8") == manifest_text(manifest):
            try:  # checksums, not sizes: a flipped byte must not pass as "unchanged"
                verify_files(out, manifest["files"], checksums=True)
                shutil.rmtree(tmp)
                return BuildResult("unchanged", manifest)
            except ShardError:
                pass  # the same shards, damaged: the fresh build replaces them
        status = "replaced" if out.exists() and any(out.iterdir()) else "written"
        swap_in_folder(tmp, out)
        return BuildResult(status, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
