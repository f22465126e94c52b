"""Checkpoints of an interrupted shard build, so that a re-run continues instead of starting over.

A build writes into a work folder next to its output (`.{out}.building`). Every so many tokens it
flushes its files and records, in `checkpoint.json`, how many documents it has consumed, the corpus
fingerprint up to there, every file's size and every counter; the segments still waiting in the
packers' buffers go to a `.npz` beside it (plain arrays, loaded without pickle). Both are replaced
atomically (temporary name + rename), the `.npz` first, so a kill at any instant leaves either the
previous checkpoint or the new one, never a mix. Bytes appended after the checkpoint are cut off on
resume. The build key (format, tokenizer hash, options) decides whether a checkpoint belongs to this
build; the fingerprint of the re-read documents decides whether the corpus is still the same.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.io import atomic_write_bytes
from engine.shards.manifest import FORMAT
from engine.shards.packing import Segment

CHECKPOINT = "checkpoint.json"


def build_key(tokenizer_sha256: str, options) -> str:
    """Identity of a build's output apart from the corpus: same key ⇒ a checkpoint can be reused."""
    text = json.dumps({"format": FORMAT, "tokenizer": tokenizer_sha256, "options": asdict(options)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class BuildCheckpoint:
    """Where an interrupted build stood: counters and file sizes (`state`) and buffered segments."""

    state: dict  # key, documents, fingerprint, files {name: bytes}, logs {split: ...}, writers {"split/L": ...}
    buffers: dict[str, list[Segment]]  # "split/L" -> segments waiting in that packer

    @property
    def documents(self) -> int:
        return self.state["documents"]


def save_checkpoint(work: Path, state: dict, buffers: dict[str, list[Segment]]) -> None:
    """Record `state` and the packers' buffers; the previous checkpoint stays valid until the rename."""
    arrays = {}
    for name, segments in buffers.items():
        tag = name.replace("/", "_")
        arrays[f"{tag}.meta"] = np.array([(s.doc, s.doc_offset, len(s.ids)) for s in segments],
                                         dtype=np.int64).reshape(-1, 3)
        arrays[f"{tag}.ids"] = (np.concatenate([s.ids for s in segments]) if segments
                                else np.zeros(0, dtype=np.int64))
        arrays[f"{tag}.word_start"] = (np.concatenate([s.word_start for s in segments]) if segments
                                       else np.zeros(0, dtype=bool))
    buffer_file = f"buffers-{state['documents']}.npz"
    data = io.BytesIO()
    np.savez(data, **arrays)
    atomic_write_bytes(work / buffer_file, data.getvalue())
    atomic_write_bytes(work / CHECKPOINT, json.dumps({**state, "buffers": buffer_file}, sort_keys=True).encode("utf-8"))
    for old in work.glob("buffers-*.npz"):
        if old.name != buffer_file:
            old.unlink()


def load_checkpoint(work: Path, key: str) -> BuildCheckpoint | None:
    """The checkpoint in `work` when it belongs to build `key` and every file it counts is there (at
    least as long as recorded); None otherwise (none, another build's, or damaged: start afresh)."""
    try:
        state = json.loads((work / CHECKPOINT).read_text(encoding="utf-8"))
        if state.get("key") != key:
            return None
        if any((work / name).stat().st_size < size for name, size in state["files"].items()):
            return None
        buffers = {}
        with np.load(work / state["buffers"], allow_pickle=False) as data:
            for name in state["writers"]:
                tag = name.replace("/", "_")
                meta, ids, word_start = data[f"{tag}.meta"], data[f"{tag}.ids"], data[f"{tag}.word_start"]
                ends = np.cumsum(meta[:, 2])
                starts = ends - meta[:, 2]
                buffers[name] = [Segment(int(doc), int(offset), ids[a:b].copy(), word_start[a:b].copy())
                                 for (doc, offset, _), a, b in zip(meta.tolist(), starts.tolist(), ends.tolist())]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return BuildCheckpoint(state, buffers)
