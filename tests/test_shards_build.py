"""Packed shards: round-trip to the source text, word starts, segments, determinism, split, checks."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine.corpus.demo import demo_documents
from engine.corpus.normalize import normalize_text
from engine.corpus.readers import CorpusError, iter_documents
from engine.shards import PackedShards, ShardError, ShardOptions, build_shards, train_vocab
from engine.shards.build import is_valid_document
from engine.shards.vocab import build_tokenizer, load_tokenizer, read_vocab_file, vocab_list
from tests.conftest import shared_path

SEQ_LENS = [32, 128]


def demo_corpus(n=300):
    return [(f"demo{i:05d}", text) for i, text in enumerate(demo_documents(n, seed=3))]


@pytest.fixture(scope="module")
def tokenizer():
    return train_vocab((text for _, text in demo_corpus()), 600)


def _options(**overrides):
    return ShardOptions(**{"seq_lens": SEQ_LENS, "valid_fraction": 0.1, "pack_buffer": 64, **overrides})


@pytest.fixture(scope="module")
def shards(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "demo"
    build_shards(demo_corpus(), out, tokenizer, _options())
    return out


def folder_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_round_trip(root: Path, split: str, seq_len: int, texts: dict[str, str]) -> int:
    """Every packed segment is [CLS] + the ids of a contiguous span of its document + [SEP], the
    segments of a document cover all its tokens in order, and each span decodes to the source text."""
    shards = PackedShards(root, split, seq_len)
    tokenizer = load_tokenizer(root)
    cls, sep, unk = shards.special_ids["cls"], shards.special_ids["sep"], shards.special_ids["unk"]
    batch = shards.get_batch(np.arange(len(shards)))
    doc_ids = shards.document_ids()
    covered = {d: 0 for d in range(len(doc_ids))}
    encodings = {}
    for row, col, size, _, doc, offset in sorted(shards.segments().tolist(), key=lambda s: (s[4], s[5])):
        ids = batch.ids[row, col:col + size].astype(np.int64)
        assert ids[0] == cls and ids[-1] == sep
        text = texts[doc_ids[doc]]
        if doc not in encodings:
            encodings = {doc: tokenizer.encode(text, add_special_tokens=False)}  # segments come by document
        encoding = encodings[doc]
        assert offset == covered[doc]
        assert ids[1:-1].tolist() == encoding.ids[offset:offset + size - 2]
        covered[doc] = offset + size - 2
        if unk not in ids:
            source = text[encoding.offsets[offset][0]:encoding.offsets[offset + size - 3][1]]
            decoded = tokenizer.decode(ids[1:-1].tolist())
            assert decoded.replace(" ", "") == "".join(normalize_text(source).split())
    lengths = [json.loads(line)[1] for line in (root / f"{split}.documents.jsonl").read_text().splitlines()]
    assert [covered[d] for d in range(len(doc_ids))] == lengths
    assert lengths == [len(tokenizer.encode(texts[i], add_special_tokens=False).ids) for i in doc_ids]
    return len(doc_ids)


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_demo_rows_round_trip_to_the_source_text(shards, seq_len):
    texts = dict(demo_corpus())
    docs = sum(assert_round_trip(shards, split, seq_len, texts) for split in ("train", "valid"))
    assert docs == len(texts)


def test_word_start_marks_tokens_that_are_not_continuation_pieces(shards):
    packed = PackedShards(shards, "train", 128)
    vocab = vocab_list(load_tokenizer(shards))
    batch = packed.get_batch(np.arange(len(packed)))
    expected = np.array([not vocab[i].startswith("##") for i in batch.ids.ravel()]).reshape(batch.ids.shape)
    real = batch.segment_ids > 0
    assert np.array_equal(batch.word_start.astype(bool)[real], expected[real])
    assert not batch.word_start[~real].any()
    assert (~expected[real]).any()  # the demo corpus does have multi-piece words


def test_segment_ids_number_segments_from_one_and_padding_is_zero_at_the_end(shards):
    packed = PackedShards(shards, "train", 32)
    batch = packed.get_batch(np.arange(len(packed)))
    cls, sep, pad = packed.special_ids["cls"], packed.special_ids["sep"], packed.special_ids["pad"]
    for ids, segs in zip(batch.ids, batch.segment_ids):
        used = int((segs > 0).sum())
        assert (segs[used:] == 0).all() and (ids[used:] == pad).all()
        assert segs[0] == 1 and (np.diff(segs[:used].astype(int)) >= 0).all()
        assert (np.diff(segs[:used].astype(int)) <= 1).all()
        starts = np.flatnonzero(np.diff(segs[:used].astype(int), prepend=0))
        ends = np.append(starts[1:], used) - 1
        assert (ids[starts] == cls).all() and (ids[ends] == sep).all()
    assert (batch.segment_ids.max(axis=1) > 1).any()  # some rows do pack several segments


def test_packing_efficiency_at_128_on_demo_corpus(shards):
    packed = PackedShards(shards, "train", 128)
    batch = packed.get_batch(np.arange(len(packed)))
    efficiency = float((batch.segment_ids > 0).mean())
    assert efficiency == pytest.approx(packed.packing_efficiency)
    assert efficiency > 0.95


def test_reader_exposes_contract_attributes(shards, tokenizer):
    packed = PackedShards(shards, "train", 128)
    assert packed.seq_len == 128 and packed.vocab_size == 600
    assert packed.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert packed.manifest_hash == hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()
    batch = packed.get_batch(np.array([5, 0, 5]))
    assert batch.ids.shape == batch.word_start.shape == batch.segment_ids.shape == (3, 128)
    assert batch.ids.dtype == np.uint16 and batch.segment_ids.dtype == np.uint8
    assert np.array_equal(batch.ids[0], batch.ids[2])


def test_same_input_and_options_give_byte_identical_shards(shards, tokenizer, tmp_path):
    build_shards(demo_corpus(), tmp_path / "again", tokenizer, _options(), workers=1, batch_documents=7)
    assert folder_digest(tmp_path / "again") == folder_digest(shards)


def test_validation_split_is_by_document_and_follows_the_id_hash(shards):
    train = set(PackedShards(shards, "train", 128).document_ids())
    valid = set(PackedShards(shards, "valid", 128).document_ids())
    assert train.isdisjoint(valid) and len(train) + len(valid) == 300
    assert valid == {doc_id for doc_id, _ in demo_corpus() if is_valid_document(doc_id, 0.1)}
    assert 10 <= len(valid) <= 55


def test_vocabulary_over_65535_entries_uses_uint32_ids(tmp_path):
    words = [f"w{i}" for i in range(70000)]
    tokenizer = build_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    build_shards([("d", " ".join(words[-50:]))], tmp_path / "big", tokenizer, _options(valid_fraction=0.0))
    batch = PackedShards(tmp_path / "big", "train", 128).get_batch(np.array([0]))
    assert batch.ids.dtype == np.uint32 and batch.ids.max() == 70004


def test_altered_shard_is_detected_at_open(shards, tokenizer, tmp_path):
    out = tmp_path / "copy"
    build_shards(demo_corpus(), out, tokenizer, _options())
    path = out / "seq128" / "train.ids.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train\.ids\.bin: altered shard"):
        PackedShards(out, "train", 128)


def test_truncated_shard_is_detected_even_without_checksums(shards, tokenizer, tmp_path):
    out = tmp_path / "copy"
    build_shards(demo_corpus(), out, tokenizer, _options())
    path = out / "seq32" / "train.segment_ids.bin"
    path.write_bytes(path.read_bytes()[:-32])
    with pytest.raises(ShardError, match=r"train\.segment_ids\.bin: truncated or altered shard"):
        PackedShards(out, "train", 32, verify_checksums=False)


def test_asking_for_an_absent_seq_len_names_the_available_ones(shards):
    with pytest.raises(ShardError, match="no shards for seq_len 512 \\(have 32, 128\\)"):
        PackedShards(shards, "train", 512)


def test_rebuilding_identical_shards_is_a_no_op(shards, tokenizer):
    before = {p: p.stat().st_mtime_ns for p in shards.rglob("*")}
    assert build_shards(demo_corpus(), shards, tokenizer, _options()).status == "unchanged"
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*")} == before


def test_output_holding_different_shards_is_refused_unless_overwrite(tokenizer, tmp_path):
    out = tmp_path / "out"
    build_shards(demo_corpus(), out, tokenizer, _options())
    before = folder_digest(out)
    with pytest.raises(ShardError, match="already holds different shards"):
        build_shards(demo_corpus(), out, tokenizer, _options(seq_lens=[64]))
    assert folder_digest(out) == before
    assert build_shards(demo_corpus(), out, tokenizer, _options(seq_lens=[64]), overwrite=True).status == "replaced"
    assert PackedShards(out, "train", 64).seq_len == 64


def test_output_holding_shards_of_another_tokenizer_is_refused(shards):
    other = train_vocab((text for _, text in demo_corpus()), 500)
    with pytest.raises(ShardError, match="already holds different shards"):
        build_shards(demo_corpus(), shards, other, _options())


def test_failed_build_leaves_no_output_and_no_temporary_folder(tokenizer, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("good text " * 50, encoding="utf-8")
    (corpus / "b.txt").write_bytes(b"bad \xff bytes")
    with pytest.raises(CorpusError, match=r"b\.txt:1"):
        build_shards(iter_documents(corpus), tmp_path / "out", tokenizer, _options())
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def test_options_reject_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="valid_fraction"):
        ShardOptions(valid_fraction=1.5)
    with pytest.raises(ValueError, match="seq_lens"):
        ShardOptions(seq_lens=[4])


def test_pmc_subset_round_trips_with_pubmedbert_vocab(tmp_path):
    corpus = shared_path("corpus", "pmc_rct_fulltext")
    tokenizer = read_vocab_file(shared_path("vocab", "pubmed-uncased-abstracts-vocab.txt"))
    docs = []
    for doc in iter_documents(corpus):
        docs.append(doc)
        if len(docs) == 40:
            break
    build_shards(docs, tmp_path / "pmc", tokenizer, ShardOptions(seq_lens=[128, 512], valid_fraction=0.1))
    texts = dict(docs)
    for seq_len in (128, 512):
        assert sum(assert_round_trip(tmp_path / "pmc", split, seq_len, texts) for split in ("train", "valid")) == 40
    manifest = json.loads((tmp_path / "pmc" / "manifest.json").read_text())
    assert manifest["sets"]["128"]["train"]["packing_efficiency"] > 0.98
