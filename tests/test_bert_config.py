"""BertConfig: presets, validation naming the field, vocabulary padding, transformers mapping."""
from __future__ import annotations

import pytest
import transformers

from engine.bert.config import BertConfig, from_hf_config, preset, to_hf_config
from engine.config import ConfigError, from_dict


def test_presets_have_the_published_shapes():
    base = preset("bert-base")
    assert (base.hidden_size, base.num_layers, base.num_heads, base.intermediate_size) == (768, 12, 12, 3072)
    large = preset("bert-large")
    assert (large.hidden_size, large.num_layers, large.num_heads) == (1024, 24, 16)
    minilm = preset("minilm-l6-h384")
    assert (minilm.hidden_size, minilm.num_layers, minilm.num_heads, minilm.intermediate_size) == (384, 6, 12, 1536)
    tiny = preset("tiny")
    assert tiny.num_layers <= 2 and tiny.hidden_size <= 64


def test_preset_overrides_replace_fields_and_unknown_names_fail():
    assert preset("bert-base", vocab_size=28996).vocab_size == 28996
    with pytest.raises(ConfigError, match="unknown field"):
        preset("bert-base", hidden=5)
    with pytest.raises(ConfigError, match="'bert-huge' is not one of"):
        preset("bert-huge")


def test_vocabulary_is_padded_up_to_the_multiple():
    assert preset("bert-base").padded_vocab_size == 30528
    assert preset("bert-base", vocab_size=30528).padded_vocab_size == 30528
    assert preset("bert-base", pad_vocab_to_multiple=1).padded_vocab_size == 30522


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_heads", 5, "model.num_heads: 5 does not divide model.hidden_size 64"),
        ("hidden_size", 0, "model.hidden_size: must be a positive integer"),
        ("hidden_dropout", 1.0, "model.hidden_dropout: must be in"),
        ("attention_dropout", -0.1, "model.attention_dropout: must be in"),
        ("layer_norm_eps", 0.0, "model.layer_norm_eps"),
        ("pad_token_id", 5000, "model.pad_token_id"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny", **{field: value})


def test_config_loads_from_a_dict_with_the_project_loader():
    config = from_dict(BertConfig, {"hidden_size": 128, "num_heads": 4, "intermediate_size": 256})
    assert config.head_dim == 32


def test_transformers_config_round_trip_keeps_every_field():
    ours = preset("minilm-l6-h384", hidden_dropout=0.05, vocab_size=30000)
    hf = to_hf_config(ours)
    assert isinstance(hf, transformers.BertConfig) and hf.vocab_size == 30000
    assert from_hf_config(hf) == ours
    assert from_hf_config(hf.to_dict()) == ours


def test_transformers_config_with_an_unsupported_variant_is_rejected():
    with pytest.raises(ConfigError, match="hidden_act"):
        from_hf_config(transformers.BertConfig(hidden_act="relu"))
    with pytest.raises(ConfigError, match="position_embedding_type"):
        from_hf_config({**transformers.BertConfig().to_dict(), "position_embedding_type": "relative_key"})
    with pytest.raises(ConfigError, match="model_type"):
        from_hf_config({"model_type": "roberta"})
