"""Read and write Hugging Face BERT folders (config.json + safetensors + tokenizer files).

Our state-dict names are those of `transformers.BertForMaskedLM`, so both directions are a plain
save/load plus two adjustments: the vocabulary rows are padded to `pad_vocab_to_multiple` on import
and sliced back on export, and a folder holding only `BertModel` weights (no MLM head, e.g. the
MiniLM teacher) gets a freshly initialised head whose decoder is tied to the word embeddings.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file

from engine.bert.config import BertConfig, from_hf_config, to_hf_config
from engine.bert.modeling import BertForMaskedLM
from engine.io import TOKENIZER_FILES, building_folder, has_tokenizer

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# HF names that BertForMaskedLM does not have (pooler, next-sentence head) or that are buffers.
IGNORED_PREFIXES = ("bert.pooler.", "cls.seq_relationship.")
IGNORED_NAMES = ("bert.embeddings.position_ids",)
# Duplicates of tied parameters; transformers re-ties them on load, safetensors refuses shared storage.
TIED_NAMES = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
VOCAB_ROWS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias")
HF_KIND = "hf-model"  # engine.outputs kind of the folders save_hf_folder writes


class HFFolderError(ValueError):
    """A HF folder that cannot be read or written; the message names the folder/file/tensor."""


def read_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a HF folder, from safetensors (single or sharded) or a `.bin` via weights_only."""
    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    binary = folder / "pytorch_model.bin"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise HFFolderError(f"{index}: not a safetensors index ({exc})") from None
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(str(folder / shard)))
        return tensors
    if binary.is_file():
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickles carrying code; say which file
            raise HFFolderError(f"{binary}: cannot be read as plain tensors ({exc})") from None
    raise HFFolderError(f"{folder}: no weights found (expected one of {list(WEIGHT_FILES)})")


def _to_mlm_names(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a BertModel/BertForMaskedLM/BertForPreTraining state dict to BertForMaskedLM names."""
    out = {}
    for name, tensor in tensors.items():
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if name in IGNORED_NAMES or name.startswith(IGNORED_PREFIXES) or name in TIED_NAMES:
            continue
        out[name] = tensor
    return out


def load_hf_folder(folder: str | Path, **config_overrides: Any) -> tuple[BertForMaskedLM, BertConfig]:
    """Our model and config from a HF BERT folder (BertForMaskedLM, BertForPreTraining or BertModel).

    `config_overrides` replace config fields (e.g. dropout, `pad_vocab_to_multiple`). A folder
    without MLM head weights yields a freshly initialised head (decoder tied to the embeddings).
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise HFFolderError(f"{folder}: not a directory")
    if not config_path.is_file():
        raise HFFolderError(f"{folder}: no config.json")
    try:
        hf_config = json.loads(config_path.read_text())
        config = from_hf_config(hf_config, **config_overrides)
    except ValueError as exc:  # JSONDecodeError and ConfigError
        raise HFFolderError(f"{config_path}: {exc}") from None
    tensors = _to_mlm_names(read_hf_state_dict(folder))
    model = BertForMaskedLM(config)
    expected = {name: p for name, p in model.state_dict().items() if name not in TIED_NAMES}
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise HFFolderError(f"{folder}: weights not in a BERT MLM model: {unexpected[:5]}")
    missing = sorted(set(expected) - set(tensors))
    head_missing = [n for n in missing if n.startswith("cls.")]
    if len(head_missing) != len(missing):
        body = [n for n in missing if not n.startswith("cls.")]
        raise HFFolderError(f"{folder}: missing weights {body[:5]}{' ...' if len(body) > 5 else ''}")
    if head_missing and len(head_missing) != sum(n.startswith("cls.") for n in expected):
        raise HFFolderError(f"{folder}: MLM head only partly present, missing {head_missing}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = expected[name]
            if name in VOCAB_ROWS and tensor.shape[1:] == target.shape[1:] and tensor.shape[0] == config.vocab_size:
                target.zero_()
                target[: config.vocab_size].copy_(tensor)
            elif tensor.shape == target.shape:
                target.copy_(tensor)
            else:
                raise HFFolderError(
                    f"{folder}: tensor {name} has shape {tuple(tensor.shape)}, the config implies {tuple(target.shape)}"
                )
    if head_missing:
        log.info("%s: no MLM head weights; the head is freshly initialised and tied to the embeddings", folder)
    return model, config


def hf_state_dict(model: BertForMaskedLM, true_vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors a HF folder holds: vocabulary rows sliced to `true_vocab_size`, tied copies left
    out (transformers re-ties them), each tensor contiguous and unshared."""
    vocab = model.config.vocab_size if true_vocab_size is None else true_vocab_size
    if not 0 < vocab <= model.config.vocab_size:
        raise HFFolderError(f"true_vocab_size: {vocab} must lie in [1, {model.config.vocab_size}] (model.vocab_size)")
    out = {}
    for name, tensor in model.state_dict().items():
        if name in TIED_NAMES:
            continue
        if name in VOCAB_ROWS:
            tensor = tensor[:vocab]
        out[name] = tensor.detach().to("cpu").contiguous().clone()
    return out


def save_hf_folder(
    model: BertForMaskedLM,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    true_vocab_size: int | None = None,
    overwrite: bool = False,
    inputs: dict[str, Path] | None = None,
    config_extras: dict[str, Any] | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write `out_dir` (config.json, model.safetensors, tokenizer files from `tokenizer_dir`) so that
    `AutoModelForMaskedLM.from_pretrained(out_dir)` loads it; all or nothing (temp dir + rename).
    An existing `out_dir` is replaced only with `overwrite` and only when the engine wrote it; an
    `out_dir` overlapping the tokenizer folder or any of `inputs` is refused (engine.outputs).
    `config_extras` are written into config.json beside the architecture. `check`, when given, is
    called on the finished temp folder before it replaces `out_dir`; what it raises cancels the write."""
    from engine.outputs import OutputFolderError, check_replaceable, mark_owned

    out_dir = Path(out_dir)
    try:
        check_replaceable(out_dir, HF_KIND, overwrite, {**(inputs or {}), "tokenizer folder": tokenizer_dir})
    except OutputFolderError as exc:
        raise HFFolderError(str(exc)) from None
    tokenizer_files = []
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        tokenizer_files = [tokenizer_dir / f for f in TOKENIZER_FILES if (tokenizer_dir / f).is_file()]
        if not has_tokenizer(tokenizer_dir):
            raise HFFolderError(f"{tokenizer_dir}: no tokenizer.json or vocab.txt to copy")
    tensors = hf_state_dict(model, true_vocab_size)
    vocab = tensors["bert.embeddings.word_embeddings.weight"].shape[0]
    with building_folder(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        hf_config = to_hf_config(model.config, true_vocab_size=vocab)
        for key, value in (config_extras or {}).items():  # e.g. the vocabulary's identity, for loaders
            setattr(hf_config, key, value)
        hf_config.to_json_file(str(tmp / "config.json"))
        for f in tokenizer_files:
            shutil.copy2(f, tmp / f.name)
        mark_owned(tmp, HF_KIND)
        if check is not None:
            check(tmp)
    return out_dir

