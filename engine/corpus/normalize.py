"""Unicode normalisation and lower-casing, defined once and shared with the tokenizer.

The shards' tokenizer (`engine.shards.vocab`) carries exactly `text_normalizer(lowercase)` in its
`tokenizer.json`, so `normalize_text(x)` is the text that the token ids of `x` spell out, and
tokenising raw or already-normalised text gives the same ids. The steps, in order:
NFKC (folds ligatures such as "ﬁ", full-width letters and compatibility forms common in text
extracted from PDFs), then BERT's own normaliser: control characters and U+FFFD removed, other
whitespace turned into spaces, spaces put around CJK characters, and for an uncased vocabulary
lower-casing plus accent stripping (NFD, drop combining marks) as BERT uncased requires.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from tokenizers import normalizers


def text_normalizer(lowercase: bool = True) -> normalizers.Normalizer:
    """The normaliser the vocabulary's tokenizer applies (NFKC + BERT clean/lower/strip accents)."""
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                   strip_accents=lowercase, lowercase=lowercase),
    ])


@lru_cache(maxsize=2)
def _cached_normalizer(lowercase: bool) -> normalizers.Normalizer:
    return text_normalizer(lowercase)


def normalize_text(text: str, lowercase: bool = True) -> str:
    """`text` as the tokenizer sees it: NFKC, cleaned, and (uncased) lower-cased without accents."""
    return _cached_normalizer(lowercase).normalize_str(text)


class _ContextSensitive(Exception):
    """The text holds a character whose normal form depends on its neighbours."""


_NON_PLAIN_ASCII = re.compile(r"[^\x20-\x7e\n]")  # a newline is whitespace to BERT either way
_HANGUL_JAMO = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))


def _context_sensitive(ch: str, lowercase: bool) -> bool:
    """Whether `ch` can normalise differently next to its neighbours than on its own.

    Uncased, the result is NFD after NFKC with nonspacing marks (Mn) dropped, so canonical
    composition is undone and only the order of spacing/enclosing marks (Mc, Me) can depend on
    context. Cased keeps composed characters, so every mark and Hangul jamo counts. Either way a
    character counts when its compatibility decomposition holds one (half-width "ﾟ" → U+309A).
    """
    for part in unicodedata.normalize("NFKD", ch):  # compatibility forms may decompose into marks
        category = unicodedata.category(part)
        if lowercase and category in ("Mc", "Me"):
            return True
        if not lowercase and (category.startswith("M") or any(lo <= ord(part) <= hi for lo, hi in _HANGUL_JAMO)):
            return True
    return False


class FastNormalizer:
    """`normalize_text` up to whitespace, an order of magnitude faster, for texts where it is exact.

    Why: normalising in the tokenizer (Rust, tracking alignments per character) is ~45 % of its
    encode time. Where no character's normal form depends on its neighbours (see
    `_context_sensitive`), the normaliser acts character by character: each character outside
    printable ASCII is mapped through the real normaliser once (cached) and ASCII is lower-cased
    by `str.lower`. Returns None for the other texts, which need the real normaliser. Feeding the
    result to the tokenizer without its normaliser gives the same ids as the full tokenizer on the
    raw text (tests check this on the PMC corpus and on awkward strings).
    """

    def __init__(self, lowercase: bool = True):
        self.lowercase = lowercase
        self.normalizer = text_normalizer(lowercase)
        self.table: dict[str, str] = {}

    def _map(self, match: re.Match) -> str:
        unit = match.group()
        mapped = self.table.get(unit)
        if mapped is None:  # first sight of this character
            if _context_sensitive(unit, self.lowercase):
                raise _ContextSensitive(unit)
            mapped = self.table[unit] = self.normalizer.normalize_str(unit)
        return mapped

    def __call__(self, text: str) -> str | None:
        try:
            text = _NON_PLAIN_ASCII.sub(self._map, text)
        except _ContextSensitive:
            return None
        return text.lower() if self.lowercase else text
