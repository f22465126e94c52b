"""Open the packed shard sets (one per sequence length) that a curriculum reads.

Kept apart from the stream so that the stream works on any object with the `PackedShards`
surface (`len()`, `get_batch`, `.vocab_size`, `.special_ids`), which is what the tests use.
"""
from __future__ import annotations

from pathlib import Path

from engine.shards import PackedShards
from engine.shards.manifest import read_manifest


def shard_facts(root: str | Path, split: str) -> tuple[set[int], set[int]]:
    """(sequence lengths that have `split` shards, those whose shards carry word-start flags).

    Reads only the manifest; a folder that is not a shard folder raises `ShardError` naming it.
    """
    manifest, _ = read_manifest(root)
    lengths, with_word_start = set(), set()
    for seq_len, splits in manifest.get("sets", {}).items():
        if split in splits:
            lengths.add(int(seq_len))
            if "word_start" in splits[split].get("files", {}):
                with_word_start.add(int(seq_len))
    return lengths, with_word_start


def open_shard_sets(root: str | Path, split: str, seq_lens: list[int], verify_checksums: bool = True) -> dict:
    """{seq_len: PackedShards} for every requested length (checked against the manifest on open)."""
    return {seq_len: PackedShards(root, split=split, seq_len=seq_len, verify_checksums=verify_checksums)
            for seq_len in seq_lens}
