"""Vocabulary: deterministic training, adopting a vocab.txt, special tokens, AutoTokenizer loading."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.corpus.demo import demo_documents
from engine.shards.vocab import (SPECIAL_TOKENS, VocabError, read_vocab_file, save_tokenizer, special_ids,
                                 tokenizer_hash, train_vocab, vocab_list)
from tests.conftest import shared_path

TRAIN_SNIPPET = """
from engine.corpus.demo import demo_documents
from engine.shards.vocab import train_vocab, tokenizer_hash
print(tokenizer_hash(train_vocab(demo_documents(200), 400)))
"""


@pytest.fixture(scope="module")
def demo_tokenizer():
    return train_vocab(demo_documents(200), 400)


def test_trained_vocabulary_has_requested_size_and_special_tokens_first(demo_tokenizer):
    vocab = vocab_list(demo_tokenizer)
    assert len(vocab) == 400
    assert vocab[:5] == list(SPECIAL_TOKENS.values())
    assert any(token.startswith("##") for token in vocab)


def test_training_is_identical_across_processes():
    # tokenizers' own WordPieceTrainer differs between processes (hash-map order); ours must not
    hashes = {subprocess.run([sys.executable, "-c", TRAIN_SNIPPET], capture_output=True, text=True,
                             check=True).stdout.strip() for _ in range(2)}
    assert len(hashes) == 1


def test_training_in_process_matches_subprocess(demo_tokenizer):
    out = subprocess.run([sys.executable, "-c", TRAIN_SNIPPET], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tokenizer_hash(demo_tokenizer)


def test_saved_tokenizer_loads_in_transformers_with_same_ids(demo_tokenizer, tmp_path):
    from transformers import AutoTokenizer
    save_tokenizer(demo_tokenizer, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = "Cisplatin INDUCED nephrotoxicity in 12 µg-treated Rats."
    assert hf(text)["input_ids"] == demo_tokenizer.encode(text).ids
    ids = special_ids(demo_tokenizer)
    assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (
        ids["pad"], ids["unk"], ids["cls"], ids["sep"], ids["mask"])


def test_pubmedbert_vocab_keeps_its_own_special_ids():
    tokenizer = read_vocab_file(shared_path("vocab", "pubmed-uncased-abstracts-vocab.txt"))
    assert special_ids(tokenizer) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert tokenizer.get_vocab_size() == 28895


def test_bert_vocab_keeps_its_own_special_ids():
    tokenizer = read_vocab_file(shared_path("vocab", "bert-base-uncased-vocab.txt"))
    assert special_ids(tokenizer) == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def test_vocab_without_mask_token_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"vocab\.txt: missing special token\(s\) \[MASK\]"):
        read_vocab_file(path)


def test_vocab_with_duplicate_token_names_the_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"vocab\.txt:7: duplicate token 'hello'"):
        read_vocab_file(path)


def test_missing_vocab_file_is_reported(tmp_path):
    with pytest.raises(VocabError, match="vocabulary file not found"):
        read_vocab_file(tmp_path / "nope.txt")
