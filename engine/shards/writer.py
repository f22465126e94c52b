"""Append-only writers for one (split, seq_len) shard set: rows go to disk as they are packed.

Nothing accumulates in memory but the current block of rows, and each file's sha256 is updated as
its bytes are written, so no file is read back to checksum it (except once, on resuming an
interrupted build: `HashedFile.reopen` cuts the file back to its checkpointed size and re-hashes it,
since a sha256 state cannot be saved).
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

    def __init__(self, path: Path, keep_bytes: int | None = None):
        """A new empty file, or (`keep_bytes` given) an existing one cut back to its first `keep_bytes`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.digest = hashlib.sha256()
        self.bytes = 0
        if keep_bytes is None:
            self.handle = open(path, "wb")
            return
        self.handle = open(path, "r+b")
        self.handle.truncate(keep_bytes)
        while chunk := self.handle.read(1 << 22):
            self.digest.update(chunk)
            self.bytes += len(chunk)
        if self.bytes != keep_bytes:
            raise ValueError(f"{path}: {self.bytes} bytes, the checkpoint recorded {keep_bytes}")

    def flush(self) -> None:
        self.handle.flush()

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.bytes += len(data)

    def close(self) -> dict:
        self.handle.close()
        return {"bytes": self.bytes, "sha256": self.digest.hexdigest()}


class DocumentLog:
    """`{split}.documents.jsonl`: one `[doc_id, num_tokens]` line per document, in index order."""

    def __init__(self, root: Path, split: str, resume: dict | None = None):
        self.name = f"{split}.documents.jsonl"
        self.file = HashedFile(root / self.name, None if resume is None else resume["bytes"])
        self.count = 0 if resume is None else resume["count"]
        self.tokens = 0 if resume is None else resume["tokens"]

    def state(self) -> dict:
        """What `DocumentLog(root, split, resume=state)` needs to continue where this one is."""
        self.file.flush()
        return {"bytes": self.file.bytes, "count": self.count, "tokens": self.tokens}

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

    def __init__(self, root: Path, split: str, seq_len: int, special: dict[str, int], id_dtype: np.dtype,
                 resume: dict | None = None):
        self.seq_len = seq_len
        self.special = special
        self.id_dtype = np.dtype(id_dtype)
        self.names = array_files(seq_len, split)
        self.files = {key: HashedFile(root / name, None if resume is None else resume["bytes"][key])
                      for key, name in self.names.items()}
        self.rows = 0 if resume is None else resume["rows"]
        self.segments = 0 if resume is None else resume["segments"]
        self.tokens = 0 if resume is None else resume["tokens"]  # non-pad positions, [CLS]/[SEP] included

    def state(self) -> dict:
        """What `ShardSetWriter(..., resume=state)` needs to continue where this one is."""
        for f in self.files.values():
            f.flush()
        return {"bytes": {key: f.bytes for key, f in self.files.items()},
                "rows": self.rows, "segments": self.segments, "tokens": self.tokens}

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
