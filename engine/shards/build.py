"""Corpus → packed shard folder, streaming, into a work folder renamed into place at the end.

Documents are normalised (`FastNormalizer`, exact) and tokenised in batches by `tokenizers` (Rust,
parallel over `workers` threads) on a second thread while the main thread splits them into
train/valid by a hash of their id, cuts and packs them per sequence length, and writes rows as they
come: memory stays flat however large the corpus. The output depends only on the documents, the
tokenizer and `ShardOptions` (never on `workers` or batch size): same input ⇒ byte-identical files.
The work folder is checkpointed as it fills (`engine.shards.resume`): a killed build run again
continues from its last checkpoint and still gives those same bytes.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer

from engine.io import TOKENIZER_FILES, swap_in_folder
from engine.shards.manifest import FORMAT, MANIFEST, SPLITS, ShardError, manifest_text, read_manifest, verify_files
from engine.shards.packing import Packer
from engine.shards.resume import CHECKPOINT, build_key, load_checkpoint, save_checkpoint
from engine.corpus.normalize import FastNormalizer
from engine.shards.vocab import (save_tokenizer, special_ids, tokenizer_hash, uses_text_normalizer, vocab_list,
                                 without_normalizer)
from engine.shards.writer import DocumentLog, ShardSetWriter

LOCK = ".lock"


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
    resumed_documents: int = 0  # documents whose work an interrupted build had already done


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


class CorpusChanged(ShardError):
    """The documents re-read on resume are not those the interrupted build had consumed."""


def write_shards(documents: Iterable[tuple[str, str]], root: Path, tokenizer: Tokenizer,
                 options: ShardOptions, batch_documents: int = 64,
                 progress: Callable[[int, int], None] | None = None,
                 checkpoint_tokens: int = 1_000_000) -> tuple[dict, int]:
    """Tokenise, pack and write everything into the work folder `root`; returns (manifest, number of
    documents reused from a checkpoint found there).

    Every `checkpoint_tokens` tokens the state is checkpointed (`engine.shards.resume`); a run that
    finds a checkpoint of the same build re-reads (without tokenising) the documents it covers, checks
    their fingerprint and continues from there, so the output is byte-identical to an uninterrupted
    run. Documents consumed before a failure are not counted: a checkpoint lies between batches.

    Long because the writers, packers, document logs and corpus fingerprint are opened, fed by
    the overlapped tokenise/pack loop and closed into the one manifest; split, all four would
    travel between the pieces.
    """
    save_tokenizer(tokenizer, root, options.lowercase)
    vocab = vocab_list(tokenizer)
    special = special_ids(tokenizer)
    id_dtype = np.dtype(np.uint16 if len(vocab) <= 65535 else np.uint32)
    continuation = np.array([token.startswith("##") for token in vocab], dtype=bool)
    key = build_key(tokenizer_hash(tokenizer), options)
    resume = load_checkpoint(root, key)

    def state_of(section: str, name: str) -> dict | None:
        return None if resume is None else resume.state[section][name]

    logs = {split: DocumentLog(root, split, state_of("logs", split)) for split in SPLITS}
    packers = {(split, L): Packer(L, options.pack_buffer) for split in SPLITS for L in options.seq_lens}
    writers = {(split, L): ShardSetWriter(root, split, L, special, id_dtype, state_of("writers", f"{split}/{L}"))
               for split in SPLITS for L in options.seq_lens}
    fingerprint = hashlib.sha256()
    consumed = 0

    def fingerprint_document(doc_id: str, text: str) -> None:
        fingerprint.update(doc_id.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")

    documents = iter(documents)
    if resume is not None:
        for doc_id, text in islice(documents, resume.documents):
            fingerprint_document(doc_id, text)
            consumed += 1
        if consumed != resume.documents or fingerprint.hexdigest() != resume.state["fingerprint"]:
            raise CorpusChanged(f"the corpus differs from the one the interrupted build in {root} started on")
        for (split, L), packer in packers.items():
            packer.buffer = resume.buffers[f"{split}/{L}"]
        if progress is not None:
            progress(consumed, 0)

    def checkpoint() -> None:
        state = {"key": key, "documents": consumed, "fingerprint": fingerprint.hexdigest(),
                 "logs": {split: log.state() for split, log in logs.items()},
                 "writers": {f"{split}/{L}": writer.state() for (split, L), writer in writers.items()}}
        state["files"] = {log.name: state["logs"][split]["bytes"] for split, log in logs.items()}
        for (split, L), writer in writers.items():
            state["files"].update({writer.names[k]: size for k, size in state["writers"][f"{split}/{L}"]["bytes"].items()})
        save_checkpoint(root, state, {f"{split}/{L}": packer.buffer for (split, L), packer in packers.items()})

    def add_batch(batch: list[tuple[str, str]], batch_ids: list[list[int]]) -> int:
        nonlocal consumed
        tokens = 0
        for (doc_id, text), doc_ids in zip(batch, batch_ids):
            fingerprint_document(doc_id, text)
            consumed += 1
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
        return tokens

    # Tokenise batch k+1 (Rust threads, GIL released) while Python packs and writes batch k.
    encode = BatchEncoder(tokenizer, options.lowercase)
    since_checkpoint = 0
    with ThreadPoolExecutor(max_workers=1) as encoder:
        pending = None
        for batch in _batches(documents, batch_documents):
            future = encoder.submit(encode, [text for _, text in batch])
            if pending is not None:
                since_checkpoint += add_batch(pending[0], pending[1].result())
                if since_checkpoint >= checkpoint_tokens:
                    checkpoint()
                    since_checkpoint = 0
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
    return manifest, 0 if resume is None else resume.documents


def _clear_work_folder(work: Path) -> None:
    """Empty `work` but keep its lock file (held by this process)."""
    for child in work.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _lock(work: Path):
    """An exclusive lock on the work folder: two builds into the same output would corrupt each other."""
    handle = open(work / LOCK, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ShardError(f"another build is writing into {work}") from None
    return handle


def build_shards(documents: Iterable[tuple[str, str]], out: str | Path, tokenizer: Tokenizer,
                 options: ShardOptions, workers: int | None = None, overwrite: bool = False,
                 batch_documents: int = 64, progress: Callable[[int, int], None] | None = None,
                 checkpoint_tokens: int = 1_000_000) -> BuildResult:
    """Build the shard folder `out` atomically: nothing appears there unless the build completes.

    The work happens in `.{out.name}.building` beside `out`. A build killed there (SIGKILL, SIGTERM,
    Ctrl-C, power cut after the page cache reached disk) leaves its last checkpoint; the same call
    again continues from it and produces the same bytes. A build that fails on bad input removes it.
    An `out` already holding identical shards is left untouched (`unchanged`); different shards
    raise ShardError unless `overwrite`.
    """
    out = Path(out)
    if workers is not None:  # read by tokenizers' thread pool when it first starts
        os.environ["RAYON_NUM_THREADS"] = str(workers)
        os.environ["RAYON_RS_NUM_CPUS"] = str(workers)
    if checkpoint_tokens < 1:
        raise ShardError(f"checkpoint_tokens must be positive, got {checkpoint_tokens}")
    check_destination(out, tokenizer, options, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.building"
    work.mkdir(exist_ok=True)
    lock = _lock(work)
    try:
        if load_checkpoint(work, build_key(tokenizer_hash(tokenizer), options)) is None:
            _clear_work_folder(work)
        try:
            manifest, reused = write_shards(documents, work, tokenizer, options, batch_documents, progress,
                                            checkpoint_tokens)
        except CorpusChanged:
            _clear_work_folder(work)
            raise CorpusChanged(f"the corpus differs from the one an interrupted build into {out} started on; "
                                f"its checkpoint is discarded, run again") from None
        (work / LOCK).unlink()
        for leftover in [*work.glob("buffers-*.npz"), *work.glob(".*.tmp*"), work / CHECKPOINT]:  # .tmp: a kill mid-write
            leftover.unlink(missing_ok=True)
        if (out / MANIFEST).is_file() and not overwrite:
            _refuse_other_corpus(out, manifest)
        if (out / MANIFEST).is_file() and (out / MANIFEST).read_text(encoding="utf-8") == manifest_text(manifest):
            try:  # checksums, not sizes: a flipped byte must not pass as "unchanged"
                verify_files(out, manifest["files"], checksums=True)
                shutil.rmtree(work)
                return BuildResult("unchanged", manifest, reused)
            except ShardError:
                pass  # the same shards, damaged: the fresh build replaces them
        status = "replaced" if out.exists() and any(out.iterdir()) else "written"
        swap_in_folder(work, out)
        return BuildResult(status, manifest, reused)
    except Exception:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        lock.close()
