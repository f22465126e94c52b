"""Masking on large synthetic packed batches: rates, 80/10/10, whole words, specials, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.curriculum.masking import IGNORE_INDEX, MaskingSpec, make_masking_vocab, mask_batch, mask_seed
from engine.benchmarks.synthetic import BERT_SPECIAL_IDS, SyntheticBatch, synthetic_rows

VOCAB = make_masking_vocab(30522, BERT_SPECIAL_IDS)
SPECIALS = torch.tensor(sorted(BERT_SPECIAL_IDS.values()))


@pytest.fixture(scope="module")
def rows() -> SyntheticBatch:
    return synthetic_rows(1024, 128, seed=3)


def _maskable(batch: SyntheticBatch) -> torch.Tensor:
    ids = torch.from_numpy(batch.ids.astype(np.int64))
    return ~torch.isin(ids, SPECIALS) & (torch.from_numpy(batch.segment_ids) != 0)


def _word_index(batch: SyntheticBatch) -> torch.Tensor:
    return torch.from_numpy(batch.word_start.astype(np.int64)).cumsum(1) - 1


@pytest.mark.parametrize("unit", ["token", "word"])
@pytest.mark.parametrize("rate", [0.15, 0.2, 0.3])
def test_realised_token_mask_rate_is_within_half_a_percent_of_the_target(rows, unit, rate):
    out = mask_batch(rows, MaskingSpec(unit=unit, rate=rate), seed=11, vocab=VOCAB)
    realised = (out.labels != IGNORE_INDEX).sum().item() / _maskable(rows).sum().item()
    assert abs(realised - rate) <= 0.005


def test_token_masking_lands_within_a_few_tokens_of_each_rows_target(rows):
    out = mask_batch(rows, MaskingSpec(unit="token", rate=0.15), seed=5, vocab=VOCAB)
    target = _maskable(rows).sum(1).float() * 0.15
    miss = ((out.labels != IGNORE_INDEX).sum(1).float() - target).abs()
    assert miss.max() < 4.0 and miss.mean() < 0.6  # a per-token Bernoulli(0.15) draw misses by ~3 on average


def test_whole_word_masking_lands_within_one_word_of_each_rows_target(rows):
    out = mask_batch(rows, MaskingSpec(unit="word", rate=0.15), seed=5, vocab=VOCAB)
    target = _maskable(rows).sum(1).float() * 0.15
    miss = ((out.labels != IGNORE_INDEX).sum(1).float() - target).abs()
    assert miss.max() < 8.0 and miss.mean() < 1.0  # synthetic words have at most 8 pieces


@pytest.mark.parametrize("unit", ["token", "word"])
def test_corruption_splits_chosen_tokens_80_10_10_within_one_percent(rows, unit):
    ids = torch.from_numpy(rows.ids.astype(np.int64))
    masked = random = kept = 0
    for seed in range(4):
        out = mask_batch(rows, MaskingSpec(unit=unit, rate=0.15), seed=seed, vocab=VOCAB)
        chosen = out.labels != IGNORE_INDEX
        masked += (out.input_ids[chosen] == VOCAB.mask_id).sum().item()
        kept += (out.input_ids[chosen] == ids[chosen]).sum().item()
        random += ((out.input_ids[chosen] != ids[chosen]) & (out.input_ids[chosen] != VOCAB.mask_id)).sum().item()
    total = masked + random + kept
    assert abs(masked / total - 0.8) <= 0.01
    assert abs(random / total - 0.1) <= 0.01
    assert abs(kept / total - 0.1) <= 0.01


def test_custom_corruption_proportions_are_followed(rows):
    ids = torch.from_numpy(rows.ids.astype(np.int64))
    spec = MaskingSpec(unit="token", rate=0.3, mask_prob=0.5, random_prob=0.3, keep_prob=0.2)
    out = mask_batch(rows, spec, seed=2, vocab=VOCAB)
    chosen = out.labels != IGNORE_INDEX
    share_mask = (out.input_ids[chosen] == VOCAB.mask_id).float().mean().item()
    share_keep = (out.input_ids[chosen] == ids[chosen]).float().mean().item()
    assert abs(share_mask - 0.5) <= 0.01 and abs(share_keep - 0.2) <= 0.01


def test_no_corruption_turns_every_chosen_token_into_mask(rows):
    spec = MaskingSpec(unit="word", rate=0.2, mask_prob=1.0, random_prob=0.0, keep_prob=0.0)
    out = mask_batch(rows, spec, seed=9, vocab=VOCAB)
    chosen = out.labels != IGNORE_INDEX
    assert chosen.sum() > 0
    assert torch.all(out.input_ids[chosen] == VOCAB.mask_id)


def test_unchosen_positions_are_unchanged_and_labels_hold_the_original_ids(rows):
    ids = torch.from_numpy(rows.ids.astype(np.int64))
    out = mask_batch(rows, MaskingSpec(unit="word"), seed=4, vocab=VOCAB)
    chosen = out.labels != IGNORE_INDEX
    assert torch.equal(out.input_ids[~chosen], ids[~chosen])
    assert torch.equal(out.labels[chosen], ids[chosen])
    assert torch.equal(out.segment_ids, torch.from_numpy(rows.segment_ids.astype(np.int64)))
    assert out.input_ids.dtype == out.labels.dtype == out.segment_ids.dtype == torch.int64


def test_whole_word_masking_masks_every_piece_of_a_chosen_word_and_never_part_of_one(rows):
    out = mask_batch(rows, MaskingSpec(unit="word", rate=0.2), seed=7, vocab=VOCAB)
    chosen = (out.labels != IGNORE_INDEX).long()
    word = _word_index(rows)
    pieces = torch.zeros_like(word).scatter_add_(1, word, _maskable(rows).long())
    picked = torch.zeros_like(word).scatter_add_(1, word, chosen)
    assert torch.all((picked == 0) | (picked == pieces))
    assert (picked[pieces > 1] > 0).any(), "no multi-piece word was ever chosen"


def test_whole_word_selection_is_not_biased_by_word_length(rows):
    word = _word_index(rows)
    pieces = torch.zeros_like(word).scatter_add_(1, word, _maskable(rows).long())
    single, multi = [], []
    for seed in range(4):
        out = mask_batch(rows, MaskingSpec(unit="word", rate=0.15), seed=seed, vocab=VOCAB)
        picked = torch.zeros_like(word).scatter_add_(1, word, (out.labels != IGNORE_INDEX).long()) > 0
        single.append(picked[pieces == 1].float().mean().item())
        multi.append(picked[pieces > 1].float().mean().item())
    assert abs(np.mean(multi) / np.mean(single) - 1.0) < 0.1


def test_token_masking_picks_pieces_independently_of_words(rows):
    out = mask_batch(rows, MaskingSpec(unit="token", rate=0.3), seed=1, vocab=VOCAB)
    word = _word_index(rows)
    pieces = torch.zeros_like(word).scatter_add_(1, word, _maskable(rows).long())
    picked = torch.zeros_like(word).scatter_add_(1, word, (out.labels != IGNORE_INDEX).long())
    assert ((picked > 0) & (picked < pieces)).any()


@pytest.mark.parametrize("unit", ["token", "word"])
def test_special_tokens_and_padding_are_never_chosen(rows, unit):
    out = mask_batch(rows, MaskingSpec(unit=unit, rate=0.3), seed=3, vocab=VOCAB)
    chosen = out.labels != IGNORE_INDEX
    assert not (chosen & ~_maskable(rows)).any()
    special_positions = ~_maskable(rows)
    assert torch.equal(out.input_ids[special_positions], torch.from_numpy(rows.ids.astype(np.int64))[special_positions])


def test_random_replacement_never_draws_special_or_unused_tokens(tmp_path):
    # A tiny vocabulary makes any leak visible: 20 real tokens among specials and [unused*] entries.
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(10)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
             [f"tok{i}" for i in range(20)]
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    special = {"pad": 0, "unk": 11, "cls": 12, "sep": 13, "mask": 14}
    vocab = make_masking_vocab(len(tokens), special, vocab_file=tmp_path / "vocab.txt")
    rng = np.random.default_rng(0)
    ids = rng.integers(15, len(tokens), (512, 64)).astype(np.uint16)
    ids[:, 0], ids[:, -1] = 12, 13
    batch = SyntheticBatch(ids, np.ones_like(ids, dtype=np.uint8), np.ones_like(ids, dtype=np.uint8))
    spec = MaskingSpec(unit="token", rate=0.5, mask_prob=0.0, random_prob=1.0, keep_prob=0.0)
    out = mask_batch(batch, spec, seed=0, vocab=vocab)
    drawn = out.input_ids[out.labels != IGNORE_INDEX]
    assert drawn.numel() > 10000
    assert drawn.min().item() >= 15
    assert len(torch.unique(drawn)) == 20


def test_rows_without_maskable_tokens_get_no_prediction():
    ids = np.zeros((4, 16), dtype=np.uint16)
    ids[:, 0], ids[:, 1] = 101, 102
    segments = np.zeros((4, 16), dtype=np.uint8)
    segments[:, :2] = 1
    batch = SyntheticBatch(ids, np.ones_like(ids, dtype=np.uint8), segments)
    for unit in ("token", "word"):
        out = mask_batch(batch, MaskingSpec(unit=unit), seed=0, vocab=VOCAB)
        assert torch.all(out.labels == IGNORE_INDEX)


def test_same_seed_gives_identical_masks_and_a_different_step_gives_different_ones(rows):
    spec = MaskingSpec(unit="word")
    first = mask_batch(rows, spec, seed=mask_seed(1, 10, 0, 0), vocab=VOCAB)
    again = mask_batch(rows, spec, seed=mask_seed(1, 10, 0, 0), vocab=VOCAB)
    later = mask_batch(rows, spec, seed=mask_seed(1, 11, 0, 0), vocab=VOCAB)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, later.labels)


def test_mask_seed_depends_on_seed_step_micro_step_and_rank():
    base = mask_seed(1, 2, 3, 4)
    variants = {mask_seed(2, 2, 3, 4), mask_seed(1, 3, 3, 4), mask_seed(1, 2, 4, 4), mask_seed(1, 2, 3, 5),
                mask_seed(1, 3, 2, 4), mask_seed(1, 2, 4, 3)}
    assert base not in variants and len(variants) == 6
    assert 0 <= base < 2 ** 63


def test_masking_accepts_torch_tensors_like_numpy_arrays(rows):
    as_torch = SyntheticBatch(*(torch.from_numpy(a.astype(np.int64)) for a in rows))
    spec = MaskingSpec(unit="word")
    assert torch.equal(mask_batch(rows, spec, 3, VOCAB).labels, mask_batch(as_torch, spec, 3, VOCAB).labels)


@pytest.mark.parametrize("field, kwargs", [
    ("rate", dict(rate=0.0)), ("rate", dict(rate=1.0)), ("unit", dict(unit="span")),
    ("sum to 1", dict(mask_prob=0.8, random_prob=0.1, keep_prob=0.2)), ("keep_prob", dict(keep_prob=-0.1)),
])
def test_bad_masking_spec_is_rejected_naming_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        MaskingSpec(**kwargs)


def test_ids_outside_the_vocabulary_are_rejected(rows):
    small = make_masking_vocab(1000, BERT_SPECIAL_IDS)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mask_batch(rows, MaskingSpec(), seed=0, vocab=small)


def test_masking_vocab_needs_a_mask_id():
    with pytest.raises(ValueError, match="mask"):
        make_masking_vocab(100, {"pad": 0, "cls": 1})
