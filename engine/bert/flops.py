"""Training FLOPs per token of `BertForMaskedLM`, for TFLOP/s and MFU in the trainer.

Counted: matrix multiplies only (the convention of Megatron/PaLM MFU), forward = 2 FLOPs per
multiply-add, training = 3 x forward (backward computes gradients w.r.t. inputs and weights).
Per token and per layer, forward:
    linear  2 * (4 h^2 + 2 h I)      (Q, K, V, output projection; two feed-forward matrices)
    attention  2 * 2 * L * h         (Q K^T and P V against L keys)
where h = hidden size, I = intermediate size and L = `seq_len`. L is the row length, an upper bound
for packed rows whose segments are shorter (the usual MFU convention; at L = 128 attention is about
3% of BERT-base FLOPs, so the bound barely moves MFU).
The MLM head (transform h^2 + decoder h V over the padded vocabulary) runs only at masked
positions in this model, so it is counted `masked_fraction` times per token, not once.
Embedding look-ups, LayerNorm, GELU, softmax and the loss are left out (not matmuls).
"""
from __future__ import annotations

from engine.bert.config import BertConfig


def forward_flops_per_token(config: BertConfig, seq_len: int, masked_fraction: float) -> float:
    """Forward matmul FLOPs per (non-pad) token; see the module docstring for the formula."""
    if seq_len < 1:
        raise ValueError(f"seq_len: must be >= 1, got {seq_len}")
    if not 0.0 <= masked_fraction <= 1.0:
        raise ValueError(f"masked_fraction: must be in [0, 1], got {masked_fraction}")
    h, i, v = config.hidden_size, config.intermediate_size, config.padded_vocab_size
    linear = 2 * (4 * h * h + 2 * h * i)
    attention = 2 * 2 * seq_len * h
    head = 2 * (h * h + h * v)
    return config.num_layers * (linear + attention) + masked_fraction * head


def training_flops_per_token(config: BertConfig, seq_len: int, masked_fraction: float = 0.15) -> float:
    """Forward + backward matmul FLOPs per (non-pad) token: 3 x forward."""
    return 3.0 * forward_flops_per_token(config, seq_len, masked_fraction)


def training_flops(config: BertConfig, seq_len: int, num_tokens: int, num_masked: int) -> float:
    """Training FLOPs of one step over `num_tokens` non-pad tokens of which `num_masked` are predicted
    (exact masked count, so MFU does not depend on an assumed masking rate)."""
    if num_tokens <= 0:
        return 0.0
    return num_tokens * training_flops_per_token(config, seq_len, num_masked / num_tokens)
