"""BertForMaskedLM: parity with transformers, packed == segments alone, masked-only loss, bad inputs."""
from __future__ import annotations

import pytest
import torch
import transformers

from engine.bert import BertForMaskedLM, BertInputError, preset, to_hf_config

VOCAB = 1000  # not a multiple of 64, so the padded rows are exercised


def _model(seed=0, **overrides) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(preset("tiny", vocab_size=VOCAB, **overrides))


def _hf_twin(model: BertForMaskedLM) -> transformers.BertForMaskedLM:
    """transformers.BertForMaskedLM holding the same weights (vocabulary rows sliced by hand)."""
    hf = transformers.BertForMaskedLM(to_hf_config(model.config))
    rows = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias", "cls.predictions.decoder.weight",
            "cls.predictions.decoder.bias")
    state = {k: (v[:VOCAB] if k in rows else v) for k, v in model.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def _padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 19), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_state_dict_names_and_shapes_match_transformers():
    model = _model()
    hf = transformers.BertForMaskedLM(to_hf_config(model.config))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert ours.keys() == theirs.keys()
    padded = model.config.padded_vocab_size
    assert ours["bert.embeddings.word_embeddings.weight"] == (padded, 64)
    assert all(ours[k] == (theirs[k] if theirs[k][:1] != (VOCAB,) else (padded, *theirs[k][1:])) for k in ours)


def test_decoder_is_tied_to_the_word_embeddings():
    model = _model()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


def test_padded_logits_match_transformers_within_1e5():
    model = _model().eval()
    hf = _hf_twin(model)
    ids, mask = _padded_batch()
    with torch.no_grad():
        ours = model.logits(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert ours.shape == theirs.shape == (3, 19, VOCAB)
    assert (ours[real] - theirs[real]).abs().max() < 1e-5
    assert ours[~real].abs().max() == 0


def test_left_padding_matches_transformers():
    model = _model().eval()
    hf = _hf_twin(model)
    ids, _ = _padded_batch()
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    mask[2, :15] = 0
    with torch.no_grad():
        ours = model.logits(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert (ours[mask.bool()] - theirs[mask.bool()]).abs().max() < 1e-5


def test_token_type_ids_follow_transformers():
    model = _model().eval()
    hf = _hf_twin(model)
    ids, mask = _padded_batch()
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        ours = model.logits(ids, attention_mask=mask, token_type_ids=types)
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert (ours[mask.bool()] - theirs[mask.bool()]).abs().max() < 1e-5


def test_masked_lm_loss_and_accuracy_match_transformers():
    model = _model().eval()
    hf = _hf_twin(model)
    ids, mask = _padded_batch()
    labels = torch.full_like(ids, -100)
    positions = [(0, 1), (0, 7), (1, 3), (1, 11), (2, 2)]
    for b, l in positions:
        labels[b, l] = ids[b, l]
    with torch.no_grad():
        out = model(ids, labels, attention_mask=mask, return_logits=True)
        reference = hf(input_ids=ids, attention_mask=mask, labels=labels)
    assert abs(out.loss.item() - reference.loss.item()) < 1e-5
    assert out.num_masked.item() == len(positions)
    expected_logits = torch.stack([reference.logits[b, l] for b, l in positions])
    assert (out.logits - expected_logits).abs().max() < 1e-5
    expected_correct = sum(int(reference.logits[b, l].argmax() == labels[b, l]) for b, l in positions)
    assert out.num_correct.item() == expected_correct


def test_accuracy_counts_correct_predictions():
    model = _model().eval()
    ids, mask = _padded_batch()
    with torch.no_grad():
        predicted = model.logits(ids, attention_mask=mask).argmax(-1)
    labels = torch.full_like(ids, -100)
    labels[0, :5] = predicted[0, :5]  # 5 right
    labels[1, :3] = (predicted[1, :3] + 1) % VOCAB  # 3 wrong
    out = model(ids, labels, attention_mask=mask)
    assert (out.num_masked.item(), out.num_correct.item()) == (8, 5)


def _packed_batch():
    """Two rows of 16: row 0 = segments of 5, 6, 3 tokens + 2 pad; row 1 = 9 tokens + 7 pad."""
    g = torch.Generator().manual_seed(3)
    lengths = [[5, 6, 3], [9]]
    ids = torch.zeros(2, 16, dtype=torch.long)
    segment_ids = torch.zeros(2, 16, dtype=torch.long)
    pieces = []
    for row, segs in enumerate(lengths):
        start = 0
        for k, n in enumerate(segs, start=1):
            tokens = torch.randint(1, VOCAB, (n,), generator=g)
            ids[row, start:start + n] = tokens
            segment_ids[row, start:start + n] = k
            pieces.append((row, start, tokens))
            start += n
    return ids, segment_ids, pieces


def test_packed_segments_give_the_same_outputs_as_each_segment_alone():
    model = _model().eval()
    ids, segment_ids, pieces = _packed_batch()
    with torch.no_grad():
        packed = model.logits(ids, segment_ids=segment_ids)
        for row, start, tokens in pieces:
            alone = model.logits(tokens[None])[0]
            assert (packed[row, start:start + len(tokens)] - alone).abs().max() < 1e-5
    assert packed[segment_ids == 0].abs().max() == 0


def test_packed_masked_lm_loss_equals_the_loss_over_segments_run_alone():
    model = _model().eval()
    ids, segment_ids, pieces = _packed_batch()
    labels = torch.full_like(ids, -100)
    for row, col in [(0, 0), (0, 4), (0, 6), (0, 12), (1, 3), (1, 8)]:
        labels[row, col] = (ids[row, col] * 7) % VOCAB
    with torch.no_grad():
        packed = model(ids, labels, segment_ids=segment_ids)
        total, count = 0.0, 0
        for row, start, tokens in pieces:
            seg_labels = labels[row, start:start + len(tokens)][None]
            n = int((seg_labels != -100).sum())
            if n:
                total += model(tokens[None], seg_labels).loss.item() * n
                count += n
    assert packed.num_masked.item() == count == 6
    assert abs(packed.loss.item() - total / count) < 1e-5


def test_vocabulary_padding_does_not_change_logits_over_the_true_vocabulary():
    padded = _model(pad_vocab_to_multiple=64).eval()
    exact = BertForMaskedLM(preset("tiny", vocab_size=VOCAB, pad_vocab_to_multiple=1)).eval()
    state = padded.state_dict()
    exact.load_state_dict({k: v[:VOCAB] if v.shape[:1] == (padded.config.padded_vocab_size,) else v
                           for k, v in state.items()})
    ids, mask = _padded_batch()
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    with torch.no_grad():
        padded.cls.predictions.bias[VOCAB:] = 100.0  # padded rows must not leak into softmax or argmax
        assert (padded.logits(ids, attention_mask=mask) - exact.logits(ids, attention_mask=mask)).abs().max() < 1e-5
        a, b = padded(ids, labels, attention_mask=mask), exact(ids, labels, attention_mask=mask)
    assert abs(a.loss.item() - b.loss.item()) < 1e-5 and a.num_correct == b.num_correct


@pytest.mark.parametrize("path", ["padded", "packed"])
def test_loss_backward_reaches_used_weights_and_not_padded_vocabulary_rows(path):
    model = _model().train()
    if path == "padded":
        ids, mask = _padded_batch()
        kwargs = {"attention_mask": mask}
    else:
        ids, segment_ids, _ = _packed_batch()
        kwargs = {"segment_ids": segment_ids}
    labels = torch.full_like(ids, -100)
    labels[0, 1] = 5
    labels[1, 2] = 9
    model(ids, labels, **kwargs).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for name in ("bert.encoder.layer.0.attention.self.query.weight", "bert.embeddings.position_embeddings.weight",
                 "cls.predictions.transform.dense.weight", "bert.embeddings.LayerNorm.weight"):
        assert grads[name].abs().sum() > 0, name
    word = grads["bert.embeddings.word_embeddings.weight"]
    assert word[VOCAB:].abs().sum() == 0
    assert grads["cls.predictions.bias"][VOCAB:].abs().sum() == 0


def test_batch_without_masked_positions_gives_zero_loss_that_still_backpropagates():
    model = _model()
    ids, mask = _padded_batch()
    out = model(ids, torch.full_like(ids, -100), attention_mask=mask)
    assert out.loss.item() == 0.0 and out.num_masked.item() == 0
    out.loss.backward()


def test_dropout_is_deterministic_given_the_torch_seed_and_off_in_eval():
    model = _model(hidden_dropout=0.3, attention_dropout=0.3).train()
    ids, mask = _padded_batch()
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    torch.manual_seed(7)
    first = model(ids, labels, attention_mask=mask).loss
    torch.manual_seed(7)
    second = model(ids, labels, attention_mask=mask).loss
    third = model(ids, labels, attention_mask=mask).loss
    assert first.item() == second.item() != third.item()
    model.eval()
    assert model(ids, labels, attention_mask=mask).loss.item() == model(ids, labels, attention_mask=mask).loss.item()


def test_same_seed_builds_the_same_weights():
    a, b = _model(seed=4), _model(seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_count_parameters_matches_the_built_model():
    from engine.bert import count_parameters
    model = _model()
    assert count_parameters(model.config) == model.num_parameters()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.tensor([[1, 2, VOCAB]])), r"input_ids: values must lie in \[0, 1000\)"),
        (dict(input_ids=torch.tensor([1, 2, 3])), r"input_ids: expected shape \[batch, seq_len\]"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 2), segment_ids=torch.ones(1, 2)),
         "either attention_mask"),
        (dict(input_ids=torch.tensor([[1, 2]]), segment_ids=torch.ones(1, 3, dtype=torch.long)),
         r"segment_ids: shape \(1, 3\) differs"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.zeros(1, 2, dtype=torch.long)),
         "no real token"),
        (dict(input_ids=torch.ones(1, 600, dtype=torch.long)), "exceeds max_position_embeddings 512"),
        (dict(input_ids=torch.ones(1, 600, dtype=torch.long), segment_ids=torch.ones(1, 600, dtype=torch.long)),
         "segment of 600 tokens exceeds max_position_embeddings"),
        (dict(input_ids=torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 2]])), "token_type_ids: values"),
        (dict(input_ids=torch.tensor([[1, 2]]), segment_ids=torch.tensor([[1, -1]])), "segment_ids: negative"),
    ],
)
def test_bad_inputs_raise_a_named_error(kwargs, message):
    model = _model()
    with pytest.raises(BertInputError, match=message):
        model.encode(**kwargs)


def test_labels_on_padding_or_out_of_range_are_rejected():
    model = _model()
    ids, mask = _padded_batch()
    labels = torch.full_like(ids, -100)
    labels[2, 10] = 3  # row 2 is padding from column 4
    with pytest.raises(BertInputError, match="1 labelled position"):
        model(ids, labels, attention_mask=mask)
    labels = torch.full_like(ids, -100)
    labels[0, 0] = VOCAB
    with pytest.raises(BertInputError, match="labels: values must be -100"):
        model(ids, labels, attention_mask=mask)
    with pytest.raises(BertInputError, match="labels: expected shape"):
        model(ids, labels[:, :3], attention_mask=mask)
