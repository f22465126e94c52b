"""Training FLOPs per token: the documented formula, checked against hand counts of the matmuls."""
from __future__ import annotations

import pytest

from engine.bert import preset, training_flops, training_flops_per_token


def test_flops_per_token_is_three_times_the_forward_matmuls():
    config = preset("tiny", vocab_size=1000)  # h=64, I=128, 2 layers, padded vocab 1024
    h, i, v, layers, seq = 64, 128, 1024, 2, 32
    per_layer = 2 * (4 * h * h + 2 * h * i) + 4 * seq * h
    head = 2 * (h * h + h * v)
    assert training_flops_per_token(config, seq, masked_fraction=0.0) == 3 * layers * per_layer
    assert training_flops_per_token(config, seq, masked_fraction=1.0) == 3 * (layers * per_layer + head)


def test_bert_base_flops_are_near_six_times_the_encoder_parameters():
    config = preset("bert-base")
    encoder_matmul_params = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    flops = training_flops_per_token(config, 128, masked_fraction=0.0)
    assert 6 * encoder_matmul_params < flops < 1.05 * 6 * encoder_matmul_params


def test_head_is_counted_only_at_the_masked_fraction():
    config = preset("bert-base")
    full = training_flops_per_token(config, 128, masked_fraction=1.0)
    none = training_flops_per_token(config, 128, masked_fraction=0.0)
    assert training_flops_per_token(config, 128) == pytest.approx(none + 0.15 * (full - none))


def test_step_flops_use_the_exact_masked_count():
    config = preset("tiny")
    assert training_flops(config, 64, num_tokens=1000, num_masked=150) == pytest.approx(
        1000 * training_flops_per_token(config, 64, masked_fraction=0.15))
    assert training_flops(config, 64, num_tokens=0, num_masked=0) == 0.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="seq_len"):
        training_flops_per_token(preset("tiny"), 0)
    with pytest.raises(ValueError, match="masked_fraction"):
        training_flops_per_token(preset("tiny"), 16, masked_fraction=1.5)
