"""The BERT model config: one small dataclass, named presets, and the mapping to `transformers`.

`vocab_size` is the tokenizer's true size; the embedding and decoder matrices hold
`padded_vocab_size` rows (rounded up to `pad_vocab_to_multiple`) and export slices them back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from engine.config import ConfigError


@dataclass
class BertConfig:
    vocab_size: int = 30522
    """Tokenizer vocabulary size (true size; the weight matrices are padded, see below)."""
    hidden_size: int = 768
    """Width of every token representation."""
    num_layers: int = 12
    """Number of transformer encoder layers."""
    num_heads: int = 12
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 3072
    """Width of the feed-forward block inside each layer."""
    max_position_embeddings: int = 512
    """Longest sequence (segment) the learned position table covers."""
    type_vocab_size: int = 2
    """Token-type (sentence A/B) embeddings; the packed path always uses type 0."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon, as in the original BERT."""
    hidden_dropout: float = 0.1
    """Dropout after embeddings, attention output and feed-forward output."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities (0 lets CUDA use the flash varlen kernel)."""
    initializer_range: float = 0.02
    """Std of the normal initialisation of linear and embedding weights."""
    pad_vocab_to_multiple: int = 64
    """Round the embedding/decoder rows up to this multiple: matmuls whose inner or outer size is a
    multiple of 64 hit the fast tensor-core / vectorised GEMM paths (30,522 -> 30,528). 1 disables."""
    pad_token_id: int = 0
    """Id of [PAD]; its embedding row is zero-initialised like in `transformers`."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size", "pad_vocab_to_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name}: must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.num_heads: {self.num_heads} does not divide model.hidden_size {self.hidden_size}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name}: must be in [0, 1), got {value!r}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"model.layer_norm_eps: must be > 0, got {self.layer_norm_eps!r}")
        if not self.initializer_range > 0:
            raise ConfigError(f"model.initializer_range: must be > 0, got {self.initializer_range!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"model.pad_token_id: {self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})"
            )

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding/decoder matrices: vocab_size rounded up to pad_vocab_to_multiple."""
        m = self.pad_vocab_to_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS: dict[str, dict[str, Any]] = {
    # tests and the demo: seconds on a CPU
    "tiny": dict(vocab_size=1024, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                 max_position_embeddings=512),
    # the MiniLM-L6-H384 teacher's shape (nreimers/MiniLM-L6-H384-uncased)
    "minilm-l6-h384": dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "bert-large": dict(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}


def preset(name: str, **overrides: Any) -> BertConfig:
    """A named preset with some fields replaced, e.g. `preset("bert-base", vocab_size=28996)`."""
    if name not in PRESETS:
        raise ConfigError(f"model.preset: {name!r} is not one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(BertConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"model: unknown field(s) {unknown} (known: {sorted(fields)})")
    return BertConfig(**{**PRESETS[name], **overrides})


# transformers' BertConfig attribute -> our field
_HF_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "initializer_range": "initializer_range",
    "pad_token_id": "pad_token_id",
}


def from_hf_config(hf_config: Any, **overrides: Any) -> BertConfig:
    """Our config from a `transformers.BertConfig` (or its `config.json` dict); rejects BERT variants
    this model does not implement (activation other than exact GELU, relative positions)."""
    data: Mapping[str, Any] = hf_config if isinstance(hf_config, Mapping) else hf_config.to_dict()
    model_type = data.get("model_type", "bert")
    if model_type != "bert":
        raise ConfigError(f"config.json model_type: expected 'bert', got {model_type!r}")
    if data.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"config.json hidden_act: only 'gelu' is supported, got {data.get('hidden_act')!r}")
    if data.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(
            "config.json position_embedding_type: only 'absolute' is supported, "
            f"got {data['position_embedding_type']!r}"
        )
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
               if k not in data]
    if missing:
        raise ConfigError(f"config.json: missing key(s) {missing}")
    values = {ours: data[theirs] for theirs, ours in _HF_FIELDS.items() if data.get(theirs) is not None}
    values.update(overrides)
    return BertConfig(**values)


def to_hf_config(config: BertConfig, true_vocab_size: int | None = None):
    """A `transformers.BertConfig` for this model; `vocab_size` is the true (unpadded) size."""
    from transformers import BertConfig as HFBertConfig

    values = {theirs: getattr(config, ours) for theirs, ours in _HF_FIELDS.items()}
    values["vocab_size"] = true_vocab_size if true_vocab_size is not None else config.vocab_size
    return HFBertConfig(
        **values,
        hidden_act="gelu",
        position_embedding_type="absolute",
        architectures=["BertForMaskedLM"],
        tie_word_embeddings=True,
    )
