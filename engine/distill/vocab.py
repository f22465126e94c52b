"""Vocabulary alignment: which new-vocabulary rows copy a teacher row, which need an init.

Special tokens are matched by role ([CLS] ↔ [CLS] whatever their ids: PubMed [CLS]=2 takes BERT's
[CLS]=101), every other token by its exact string. The new tokenizer is a plain BERT WordPiece
tokenizer over the new vocabulary, saved as `tokenizer.json` so that `AutoTokenizer` loads it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.distill.errors import DistillError
from engine.shards.vocab import (MODEL_MAX_LENGTH, SPECIAL_TOKENS, VocabError, build_tokenizer, read_vocab_lines,
                                 token_ids)
from engine.shards.vocab import save_tokenizer as save_shard_tokenizer

def read_vocab(path: str | Path) -> list[str]:
    """Tokens in id order from a `vocab.txt`, or from a tokenizer folder (vocab.txt or tokenizer.json)."""
    path = Path(path)
    if path.is_dir():
        if (path / "vocab.txt").is_file():
            path = path / "vocab.txt"
        elif (path / "tokenizer.json").is_file():
            return _vocab_from_tokenizer_json(path / "tokenizer.json")
        else:
            raise DistillError(f"{path}: no vocab.txt or tokenizer.json in this tokenizer folder")
    try:
        tokens = read_vocab_lines(path)
        token_ids(tokens, str(path))
    except VocabError as exc:
        raise DistillError(str(exc)) from None
    if not tokens:
        raise DistillError(f"{path}: vocabulary is empty")
    return tokens


def _vocab_from_tokenizer_json(path: Path) -> list[str]:
    try:
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
        raise DistillError(f"{path}: cannot read tokenizer.json ({exc})") from None
    if model.get("type") != "WordPiece":
        raise DistillError(f"{path}: tokenizer model is {model.get('type')!r}, only WordPiece is supported")
    vocab = model["vocab"]
    tokens = [""] * len(vocab)
    for token, idx in vocab.items():
        tokens[idx] = token
    return tokens


def special_ids(tokens: list[str], where: str | Path) -> dict[str, int]:
    """Role → id for [PAD] [UNK] [CLS] [SEP] [MASK]; a missing one is an error naming the file."""
    index = {t: i for i, t in enumerate(tokens)}
    missing = [tok for tok in SPECIAL_TOKENS.values() if tok not in index]
    if missing:
        raise DistillError(f"{where}: vocabulary lacks special token(s) {', '.join(missing)}")
    return {role: index[tok] for role, tok in SPECIAL_TOKENS.items()}


def is_uncased(tokens: list[str]) -> bool:
    """True when no ordinary token holds an upper-case letter (then text is lower-cased first)."""
    specials = set(SPECIAL_TOKENS.values())
    return not any(t != t.lower() for t in tokens if t not in specials and not (t.startswith("[") and t.endswith("]")))


@dataclass
class Alignment:
    """How each new-vocabulary row is filled: copied from an old row, or initialised."""

    shared_new: np.ndarray  # int64 new ids whose row is copied (specials by role, others by string)
    shared_old: np.ndarray  # int64 old ids they copy, same order
    new_ids: np.ndarray  # int64 new ids with no teacher row: these get the method's init
    dropped: int  # old tokens that the new vocabulary does not have (their rows are left behind)

    def counts(self) -> dict[str, int]:
        return {"shared": int(len(self.shared_new)), "new": int(len(self.new_ids)), "dropped": int(self.dropped)}


def align(old_tokens: list[str], new_tokens: list[str], old_where: str | Path, new_where: str | Path) -> Alignment:
    """Pair new ids with old ids: special tokens by role, every other token by identical string."""
    old_special = special_ids(old_tokens, old_where)
    new_special = special_ids(new_tokens, new_where)
    old_index = {t: i for i, t in enumerate(old_tokens)}
    pairs = {new_special[role]: old_special[role] for role in SPECIAL_TOKENS}
    for new_id, token in enumerate(new_tokens):
        if new_id not in pairs and token in old_index:
            pairs[new_id] = old_index[token]
    shared_new = np.array(sorted(pairs), dtype=np.int64)
    shared_old = np.array([pairs[i] for i in shared_new], dtype=np.int64)
    new_ids = np.array([i for i in range(len(new_tokens)) if i not in pairs], dtype=np.int64)
    dropped = len(old_tokens) - len(set(shared_old.tolist()))
    return Alignment(shared_new=shared_new, shared_old=shared_old, new_ids=new_ids, dropped=dropped)


def make_tokenizer(tokens: list[str], lowercase: bool):
    """A transformers fast tokenizer over `tokens`, built exactly as the shards build theirs.

    Same normaliser (NFKC + BERT's), pre-tokeniser and post-processor as `engine.shards.vocab`, so a
    folder written here tokenises text into the same ids as shards made with this vocabulary.
    """
    from transformers import PreTrainedTokenizerFast

    try:
        backend = build_tokenizer(tokens, lowercase, source="new vocabulary")
    except VocabError as exc:
        raise DistillError(str(exc)) from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=MODEL_MAX_LENGTH,
                                   **{f"{role}_token": token for role, token in SPECIAL_TOKENS.items()})


def save_tokenizer(tokenizer, lowercase: bool, folder: Path) -> None:
    """Write the tokenizer files the way the shard folder has them (`engine.shards.vocab.save_tokenizer`)."""
    save_shard_tokenizer(tokenizer.backend_tokenizer, folder, lowercase)
