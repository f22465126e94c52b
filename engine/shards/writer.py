"""Append-only writers for one (split, seq_len) shard set: rows go to disk as they are packed.

Nothing accumulates in memory but the current block of rows, and each file's sha256 is updated as
its bytes are written, so no file is read back to checksum it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from engine.shards.manifest import array_files
from engine.shards.packing import Row, fill_rows


class HashedFile:
    """A binary file opened for writing that tracks its size and sha256."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.handle = open(path, "wb")
        self.digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.bytes += len(data)

    def close(self) -> dict:
        self.handle.close()
        return {"bytes": self.bytes, "sha256": self.digest.hexdigest()}


class DocumentLog:
    """`{split}.documents.jsonl`: one `[doc_id, num_tokens]` line per document, in index order."""

    def __init__(self, root: Path, split: str):
        self.name = f"{split}.documents.jsonl"
        self.file = HashedFile(root / self.name)
        self.count = 0
        self.tokens = 0

    def add(self, doc_id: str, num_tokens: int) -> int:
        """Record a document; returns its index in the split."""
        self.file.write((json.dumps([doc_id, num_tokens], ensure_ascii=False) + "\n").encode("utf-8"))
        self.count += 1
        self.tokens += num_tokens
        return self.count - 1

    def close(self) -> dict[str, dict]:
        return {self.name: self.file.close()}


class ShardSetWriter:
    """Writes packed rows of one (split, seq_len) set: ids, word_start, segment_ids, segments."""

    def __init__(self, root: Path, split: str, seq_len: int, special: dict[str, int], id_dtype: np.dtype):
        self.seq_len = seq_len
        self.special = special
        self.id_dtype = np.dtype(id_dtype)
        self.names = array_files(seq_len, split)
        self.files = {key: HashedFile(root / name) for key, name in self.names.items()}
        self.rows = 0
        self.segments = 0
        self.tokens = 0  # non-pad positions, [CLS]/[SEP] included

    def write(self, rows: list[Row]) -> None:
        if not rows:
            return
        ids, word_start, segment_ids, records = fill_rows(
            rows, self.seq_len, self.special["pad"], self.special["cls"], self.special["sep"], self.id_dtype)
        table = np.empty((len(records), 6), dtype=np.int64)
        i = 0
        for (r, col, size, k), row in zip(records, (s for row in rows for s in row.segments)):
            table[i] = (self.rows + r, col, size, k, row.doc, row.doc_offset)
            i += 1
        self.files["ids"].write(ids.tobytes())
        self.files["word_start"].write(word_start.tobytes())
        self.files["segment_ids"].write(segment_ids.tobytes())
        self.files["segments"].write(table.tobytes())
        self.rows += len(rows)
        self.segments += len(records)
        self.tokens += int(table[:, 2].sum())

    def close(self) -> tuple[dict, dict[str, dict]]:
        """(summary for the manifest's `sets`, {file name: {bytes, sha256}})."""
        files = {self.names[key]: f.close() for key, f in self.files.items()}
        positions = self.rows * self.seq_len
        summary = {
            "rows": self.rows, "segments": self.segments, "tokens": self.tokens,
            "packing_efficiency": self.tokens / positions if positions else 0.0,
            "ids_dtype": self.id_dtype.name, "files": self.names,
        }
        return summary, files
