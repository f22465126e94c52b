"""WordPiece vocabulary: train one from a corpus, or adopt an existing `vocab.txt`; save it so that
`transformers.AutoTokenizer.from_pretrained(folder)` loads exactly the tokenizer the shards used.

The saved `tokenizer_config.json` names `PreTrainedTokenizerFast` on purpose: transformers' own
`BertTokenizer` rebuilds its normaliser from flags and would drop the NFKC step that
`engine.corpus.normalize` defines, so the ids it produced could differ from the shards'.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from engine.corpus.normalize import text_normalizer
from engine.shards.wordpiece import count_words, train_wordpiece

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
MODEL_MAX_LENGTH = 512


class VocabError(ValueError):
    """A vocabulary that cannot be used (missing special tokens, duplicates, bad size)."""


def build_tokenizer(vocab: list[str], lowercase: bool = True, source: str = "vocabulary") -> Tokenizer:
    """A BERT WordPiece tokenizer over `vocab` (token i has id i) with the shared normaliser."""
    missing = [t for t in SPECIAL_TOKENS.values() if t not in vocab]
    if missing:
        raise VocabError(f"{source}: missing special token(s) {', '.join(missing)}")
    seen = token_ids(vocab, source)
    tokenizer = Tokenizer(models.WordPiece(seen, unk_token=SPECIAL_TOKENS["unk"], max_input_chars_per_word=100))
    tokenizer.normalizer = text_normalizer(lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, seen[cls]), (sep, seen[sep])])
    return tokenizer


def token_ids(vocab: list[str], source: str) -> dict[str, int]:
    """token → id, refusing empty, space-padded and duplicate tokens (named by line)."""
    seen: dict[str, int] = {}
    for i, token in enumerate(vocab):
        if not token or token != token.strip():
            raise VocabError(f"{source}:{i + 1}: empty or space-padded token {token!r}")
        if token in seen:
            raise VocabError(f"{source}:{i + 1}: duplicate token {token!r} (first at line {seen[token] + 1})")
        seen[token] = i
    return seen


def read_vocab_lines(path: str | Path) -> list[str]:
    """The tokens of a `vocab.txt` (one per line, line i = id i), unchecked."""
    path = Path(path)
    if not path.is_file():
        raise VocabError(f"vocabulary file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise VocabError(f"{path}: undecodable bytes (not UTF-8) at byte {exc.start}") from None
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_vocab_file(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """Adopt an existing `vocab.txt` (one token per line, line i = id i), e.g. PubMedBERT's."""
    return build_tokenizer(read_vocab_lines(path), lowercase, source=str(path))


def train_vocab(texts: Iterable[str], vocab_size: int, lowercase: bool = True,
                min_frequency: int = 2, limit_alphabet: int = 1000) -> Tokenizer:
    """Train a BERT WordPiece vocabulary of `vocab_size` entries on `texts` (raw; normalised here).

    Special tokens take ids 0-4 ([PAD] [UNK] [CLS] [SEP] [MASK]), as in PubMedBERT's vocabulary;
    the trainer is deterministic (see `engine.shards.wordpiece`).
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise VocabError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    normalizer = text_normalizer(lowercase)
    word_counts = count_words(texts, normalizer, pre_tokenizers.BertPreTokenizer())
    vocab = train_wordpiece(word_counts, vocab_size, list(SPECIAL_TOKENS.values()),
                            min_frequency=min_frequency, limit_alphabet=limit_alphabet)
    return build_tokenizer(vocab, lowercase, source="trained vocabulary")


def uses_text_normalizer(tokenizer: Tokenizer, lowercase: bool) -> bool:
    """Whether `tokenizer` normalises exactly as `engine.corpus.normalize.text_normalizer(lowercase)`."""
    reference = Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    reference.normalizer = text_normalizer(lowercase)
    return json.loads(tokenizer.to_str())["normalizer"] == json.loads(reference.to_str())["normalizer"]


def without_normalizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` that skips normalisation (for text normalised beforehand)."""
    bare = Tokenizer.from_str(tokenizer.to_str())
    bare.normalizer = None
    return bare


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """{"pad", "unk", "cls", "sep", "mask"} → id in this vocabulary."""
    return {name: tokenizer.token_to_id(token) for name, token in SPECIAL_TOKENS.items()}


def vocab_list(tokenizer: Tokenizer) -> list[str]:
    """Tokens in id order."""
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return sorted(vocab, key=vocab.__getitem__)


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The canonical `tokenizer.json` text (stable key order: same tokenizer ⇒ same bytes)."""
    return json.dumps(json.loads(tokenizer.to_str()), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the canonical tokenizer.json: identifies vocabulary + normaliser + pre-tokeniser."""
    return hashlib.sha256(tokenizer_json(tokenizer).encode("utf-8")).hexdigest()


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path, lowercase: bool = True) -> None:
    """Write tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tokenizer_json(tokenizer), encoding="utf-8")
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab_list(tokenizer)), encoding="utf-8")
    special_map = {f"{name}_token": token for name, token in SPECIAL_TOKENS.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "do_lower_case": lowercase,
              "model_max_length": MODEL_MAX_LENGTH, "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "token_type_ids", "attention_mask"], **special_map}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, sort_keys=True) + "\n",
                                                 encoding="utf-8")


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer saved by `save_tokenizer` (tokenizer.json in `folder`)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise VocabError(f"tokenizer not found: {path}")
    return Tokenizer.from_file(str(path))


def vocabulary_sha256(folder: str | Path) -> str | None:
    """sha256 of a folder's tokens in id order (tokenizer.json, else vocab.txt); None without either.

    The identity that the rows of an embedding matrix depend on: two vocabularies of the same size
    whose tokens are shuffled differ here, where a size check would pass them.
    """
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        try:
            tokens = vocab_list(Tokenizer.from_file(str(folder / "tokenizer.json")))
        except Exception as exc:  # tokenizers raises its own exception type for a malformed file
            raise VocabError(f"{folder / 'tokenizer.json'}: unreadable tokenizer ({exc})") from None
    elif (folder / "vocab.txt").is_file():
        tokens = read_vocab_lines(folder / "vocab.txt")
    else:
        return None
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def check_same_vocabulary(first: tuple[str, str | Path], second: tuple[str, str | Path]) -> None:
    """Raise VocabError naming both when the (what, folder) pairs hold different vocabularies;
    a folder without tokenizer files has nothing to compare and passes."""
    (what_a, a), (what_b, b) = first, second
    hash_a, hash_b = vocabulary_sha256(a), vocabulary_sha256(b)
    if hash_a is not None and hash_b is not None and hash_a != hash_b:
        raise VocabError(f"{what_a} {a} and {what_b} {b} hold different vocabularies (token order or tokens "
                         f"differ, sha256 {hash_a[:12]}… vs {hash_b[:12]}…)")
