"""Open the model to evaluate: an HF BERT folder with its tokenizer, or a clear error saying what is wrong.

A DeepSpeed checkpoint folder is recognised here and refused with the export command to run first,
since the NER package never imports the trainer (architecture: `ner` uses `bert`, never `training`);
the entry script `evaluate_ner.py` recognises it first and exports it to a temporary folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.io import TOKENIZER_CORE, has_tokenizer
from engine.ner.errors import NerError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def looks_like_deepspeed_checkpoint(folder: Path) -> bool:
    """A DeepSpeed save (`latest` tag file, `*mp_rank_*_model_states.pt`) or the engine's checkpoint
    layout (`step_*/` tag folders, `run_state.json`), given as the checkpoint folder or one tag folder."""
    markers = ("latest", "latest_complete", "run_state.json")
    return any((folder / name).is_file() for name in markers) or any(folder.glob("*mp_rank_*_model_states.pt")) \
        or any(folder.glob("*/*mp_rank_*_model_states.pt")) or any(p.is_dir() for p in folder.glob("step_*"))


def check_model_folder(path: str | Path) -> Path:
    """Fail early (before anything is written) unless `path` is an HF BERT folder with a tokenizer."""
    folder = Path(path)
    if not folder.is_dir():
        raise NerError(f"{folder}: model folder not found")
    if looks_like_deepspeed_checkpoint(folder):
        raise NerError(f"{folder}: this is a DeepSpeed checkpoint, not an HF folder; export it first: "
                       f"python engine/export_hf.py {folder} OUT_DIR, then pass --model OUT_DIR")
    config = folder / "config.json"
    if not config.is_file():
        raise NerError(f"{folder}: no config.json (expected an HF model folder)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as exc:
        raise NerError(f"{config}:{exc.lineno}: cannot parse JSON: {exc.msg}") from None
    if not model_type:
        raise NerError(f"{config}: no model_type (expected an HF config, e.g. \"bert\")")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise NerError(f"{folder}: no weights ({' / '.join(WEIGHT_FILES)})")
    if not has_tokenizer(folder):
        raise NerError(f"{folder}: no tokenizer ({' or '.join(TOKENIZER_CORE)}); save the tokenizer "
                       "next to the weights (the engine's export does)")
    return folder


def check_tokenizer_identity(folder: Path, recorded: str | None) -> None:
    """The engine's export records which vocabulary the weights were trained on (config.json
    `vocab_sha256`); a tokenizer swapped in afterwards, even one of the same size, is refused."""
    from engine.shards.vocab import VocabError, vocabulary_sha256

    if recorded is None:
        return
    try:
        found = vocabulary_sha256(folder)
    except VocabError as exc:
        raise NerError(str(exc)) from None
    if found != recorded:
        raise NerError(f"{folder}: the tokenizer is not the vocabulary the model was trained on "
                       f"(sha256 {str(found)[:12]}… vs {recorded[:12]}… in config.json)")


def load_tokenizer(folder: Path):
    """The folder's tokenizer, checked to have a real vocabulary that fits the model's embeddings."""
    from transformers import AutoConfig, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise NerError(f"{folder}: cannot load tokenizer: {str(exc).splitlines()[0]}") from None
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
        raise NerError(f"{folder}: tokenizer lacks [CLS]/[SEP]/[PAD] tokens (expected a BERT WordPiece tokenizer)")
    model_config = AutoConfig.from_pretrained(folder)
    vocab_size = getattr(model_config, "vocab_size", None)
    check_tokenizer_identity(folder, getattr(model_config, "vocab_sha256", None))
    if len(tokenizer) <= len(tokenizer.all_special_ids):  # e.g. tokenizer_config.json alone loads an empty vocab
        raise NerError(f"{folder}: tokenizer has no vocabulary beyond special tokens")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise NerError(f"{folder}: tokenizer has {len(tokenizer)} entries but the model's vocab_size is {vocab_size}")
    return tokenizer


def load_token_classifier(folder: Path, labels: list[str]):
    """`AutoModelForTokenClassification` with a fresh head for `labels` (seed the RNG before calling).

    Weights are loaded as float32 master weights: transformers 5 otherwise keeps the file's dtype, and
    AdamW on fp16/bf16 weights stalls or diverges (bf16 autocast handles the fast path on GPU).
    """
    import torch
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the load report lists the new head as "missing": expected here
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForTokenClassification.from_pretrained(
            folder, dtype=torch.float32, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)})
    except (OSError, ValueError) as exc:
        raise NerError(f"{folder}: cannot load as a token classifier: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
