"""Random access to packed rows: any row in O(1) through memory maps, nothing read up front.

Opening checks every file of the requested set against the manifest: its size always, its sha256
unless `verify_checksums=False` (for very large sets on slow disks), so a truncated or altered
shard fails at open with the file's name instead of producing garbage mid-training.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.io import TOKENIZER_FILES
from engine.shards.manifest import SEGMENT_COLUMNS, ShardError, read_manifest, verify_files


class PackedBatch(NamedTuple):
    """A batch of packed rows, `[B, seq_len]` each."""

    ids: np.ndarray  # uint16/uint32 token ids, [PAD]-filled
    word_start: np.ndarray  # uint8, 1 where a token starts a word
    segment_ids: np.ndarray  # uint8, 0 for padding, k for the k-th segment of the row


class PackedShards:
    """The rows of one split at one sequence length of a shard folder."""

    def __init__(self, root: str | Path, split: str = "train", seq_len: int = 128, verify_checksums: bool = True):
        self.root = Path(root)
        manifest, self.manifest_hash = read_manifest(self.root)
        self.manifest = manifest
        sets = manifest["sets"]
        if str(seq_len) not in sets:
            raise ShardError(f"{self.root}: no shards for seq_len {seq_len} (have {', '.join(sorted(sets, key=int))})")
        if split not in sets[str(seq_len)]:
            raise ShardError(f"{self.root}: no split {split!r} (have {', '.join(sorted(sets[str(seq_len)]))})")
        info = sets[str(seq_len)][split]
        names = list(info["files"].values()) + list(TOKENIZER_FILES) + [manifest["splits"][split]["file"]]
        verify_files(self.root, {name: manifest["files"][name] for name in names}, checksums=verify_checksums)
        self.split = split
        self.seq_len = seq_len
        self.vocab_size: int = manifest["tokenizer"]["vocab_size"]
        self.special_ids: dict[str, int] = dict(manifest["tokenizer"]["special_ids"])
        self.num_rows: int = info["rows"]
        self.packing_efficiency: float = info["packing_efficiency"]
        shape = (self.num_rows, seq_len)
        self._ids = self._map(info["files"]["ids"], np.dtype(info["ids_dtype"]), shape)
        self._word_start = self._map(info["files"]["word_start"], np.uint8, shape)
        self._segment_ids = self._map(info["files"]["segment_ids"], np.uint8, shape)
        self._segments_file = info["files"]["segments"]
        self._num_segments: int = info["segments"]

    def _map(self, name: str, dtype, shape: tuple[int, int]) -> np.ndarray:
        if shape[0] == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(self.root / name, dtype=dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return self.num_rows

    def get_batch(self, indices: np.ndarray) -> PackedBatch:
        """Rows `indices` (any order, repeats allowed) as in-memory arrays `[len(indices), seq_len]`."""
        indices = np.asarray(indices, dtype=np.int64)
        return PackedBatch(self._ids.take(indices, axis=0), self._word_start.take(indices, axis=0),
                           self._segment_ids.take(indices, axis=0))

    @property
    def tokenizer_dir(self) -> Path:
        """The folder holding tokenizer.json / vocab.txt (loadable by `AutoTokenizer`)."""
        return self.root

    def segments(self) -> np.ndarray:
        """Per-segment index `[segments, 6]`: row, column, size, segment number, document, offset."""
        if self._num_segments == 0:
            return np.zeros((0, len(SEGMENT_COLUMNS)), dtype=np.int64)
        return np.fromfile(self.root / self._segments_file, dtype=np.int64).reshape(-1, len(SEGMENT_COLUMNS))

    def document_ids(self) -> list[str]:
        """Ids of the split's documents, in the index order used by `segments()`."""
        path = self.root / self.manifest["splits"][self.split]["file"]
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line)[0] for line in fh]
