"""The shard folder's manifest: file names, shapes, counts and sha256 per file; and its checks.

Layout of a shard folder (all names relative to it):
    manifest.json  tokenizer.json  vocab.txt  tokenizer_config.json  special_tokens_map.json
    {split}.documents.jsonl          one line per document of the split: [doc_id, num_tokens]
    seq{L}/{split}.ids.bin           [rows, L] uint16 (uint32 for vocabularies over 65,535), [PAD]-filled
    seq{L}/{split}.word_start.bin    [rows, L] uint8, 1 where a token starts a word
    seq{L}/{split}.segment_ids.bin   [rows, L] uint8, 0 = padding, k = k-th segment of the row
    seq{L}/{split}.segments.bin      [segments, 6] int64: row, column, size (with [CLS]/[SEP]),
                                     segment number in the row, document index, token offset in it
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = "bioptimus-packed-shards/1"
SPLITS = ("train", "valid")
SEGMENT_COLUMNS = ("row", "column", "size", "segment", "doc", "doc_offset")
MANIFEST = "manifest.json"


class ShardError(ValueError):
    """A shard folder that is missing, altered, truncated, or not what the caller asked for."""


def array_files(seq_len: int, split: str) -> dict[str, str]:
    """Name of each per-(seq_len, split) file, relative to the shard folder."""
    base = f"seq{seq_len}/{split}"
    return {"ids": f"{base}.ids.bin", "word_start": f"{base}.word_start.bin",
            "segment_ids": f"{base}.segment_ids.bin", "segments": f"{base}.segments.bin"}


def manifest_text(manifest: dict) -> str:
    """Canonical JSON (sorted keys): same content ⇒ same bytes ⇒ same manifest hash."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def read_manifest(root: str | Path) -> tuple[dict, str]:
    """(manifest, sha256 of manifest.json); ShardError when missing or unreadable."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ShardError(f"not a shard folder (no {MANIFEST}): {root}")
    data = path.read_bytes()
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: not a {FORMAT} manifest")
    return manifest, hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(root: str | Path, files: dict[str, dict], checksums: bool = True) -> None:
    """Check each listed file's size (always) and sha256 (when `checksums`); ShardError naming it."""
    root = Path(root)
    for name, entry in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise ShardError(f"{path}: shard file missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ShardError(f"{path}: truncated or altered shard ({size} bytes, manifest says {entry['bytes']})")
        if checksums and file_sha256(path) != entry["sha256"]:
            raise ShardError(f"{path}: altered shard (sha256 differs from manifest)")
