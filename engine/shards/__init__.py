"""Shards stage: WordPiece vocabulary, packing, shard writer/reader, manifest + checksums.

`PackedShards(root, split, seq_len).get_batch(indices) -> PackedBatch(ids, word_start, segment_ids)`
is the contract the curriculum and training stages read (docs/architecture.md, "Shards").
"""
from engine.shards.build import BuildResult, ShardOptions, build_shards
from engine.shards.manifest import ShardError
from engine.shards.reader import PackedBatch, PackedShards
from engine.shards.vocab import VocabError, load_tokenizer, read_vocab_file, train_vocab

__all__ = ["BuildResult", "PackedBatch", "PackedShards", "ShardError", "ShardOptions", "VocabError",
           "build_shards", "load_tokenizer", "read_vocab_file", "train_vocab"]
