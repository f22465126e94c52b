"""The stream on real packed shards (built from the embedded demo corpus) through `open_training_stream`."""
from __future__ import annotations

import pytest
import torch

from engine.config import ConfigError
from engine.corpus.demo import demo_documents
from engine.curriculum import CurriculumConfig, IGNORE_INDEX, open_training_stream
from engine.shards import ShardOptions, build_shards, train_vocab


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    docs = [(f"demo{i:05d}", text) for i, text in enumerate(demo_documents(200, seed=5))]
    tokenizer = train_vocab((text for _, text in docs), 600)
    out = tmp_path_factory.mktemp("curriculum") / "shards"
    build_shards(docs, out, tokenizer, ShardOptions(seq_lens=[64, 128], valid_fraction=0.1, pack_buffer=64))
    return out


def test_bioptimus_stream_on_real_shards_masks_whole_words(shard_root):
    vocab = (shard_root / "vocab.txt").read_text(encoding="utf-8").splitlines()
    continuation = torch.tensor([token.startswith("##") for token in vocab])
    with open_training_stream(shard_root, CurriculumConfig(preset="bioptimus"), total_steps=8, seed=3,
                              micro_batch_size=8, grad_accum=1, default_seq_len=128) as stream:
        items = list(stream)
    assert [i.phase.index for i in items] == [0, 0, 1, 1, 2, 2, 3, 3]
    for item in items[2:]:
        chosen = item.batch.labels != IGNORE_INDEX
        original = torch.where(chosen, item.batch.labels, item.batch.input_ids)
        piece = continuation[original]
        # A chosen ## piece has its left neighbour chosen; an unchosen one has it unchosen.
        assert torch.equal(chosen[:, 1:][piece[:, 1:]], chosen[:, :-1][piece[:, 1:]])
        assert chosen.any()


def test_replacements_on_real_shards_come_from_ordinary_vocabulary_entries(shard_root):
    vocab = (shard_root / "vocab.txt").read_text(encoding="utf-8").splitlines()
    bracketed = torch.tensor([token.startswith("[") and token.endswith("]") for token in vocab])
    with open_training_stream(shard_root, CurriculumConfig(preset="flat"), total_steps=6, seed=1,
                              micro_batch_size=16, default_seq_len=64) as stream:
        for item in stream:
            chosen = item.batch.labels != IGNORE_INDEX
            replaced = chosen & (item.batch.input_ids != item.batch.labels) & (item.batch.input_ids != stream.vocab.mask_id)
            assert not bracketed[item.batch.input_ids[replaced]].any()


def test_a_phase_asking_for_a_missing_sequence_length_fails_before_training(shard_root):
    with pytest.raises(ConfigError, match=r"phases\[1\]: phase 'seq-512'\.seq_len: no shards with seq_len 512"):
        open_training_stream(shard_root, CurriculumConfig(preset="seqlen-warmup"), total_steps=10, seed=0,
                             default_seq_len=128)
