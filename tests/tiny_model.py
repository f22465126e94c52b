"""Test fixture: a tiny random BERT folder (config, weights, WordPiece tokenizer) for fast NER tests.

The vocabulary holds every single character (plain and `##`) plus the given whole words, so words
outside the list split into several pieces: exactly what sub-piece alignment and windowing must
survive. Weights are random (seeded); it exercises the pipeline, not accuracy.
"""
from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tiny_bert(out_dir: str | Path, words: list[str], seed: int = 0, hidden: int = 32, layers: int = 2,
                    max_positions: int = 128) -> Path:
    """Save a BertForMaskedLM + fast tokenizer to `out_dir`, loadable with the Auto* classes."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = SPECIALS + list(chars) + [f"##{c}" for c in chars]
    vocab += sorted({w.lower() for w in words} - set(vocab))
    tokenizer = BertTokenizerFast(vocab={piece: i for i, piece in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=max_positions, pad_token_id=0)
    BertForMaskedLM(config).save_pretrained(out)
    return out
