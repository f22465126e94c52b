"""Normalisation: NFKC + BERT-uncased lower-casing, and agreement with the vocabulary's tokenizer."""
from __future__ import annotations

from engine.corpus.normalize import normalize_text
from engine.shards.vocab import build_tokenizer

SAMPLES = ["Café Ärzte NAÏVE", "5 µg/kg ﬁbrosis", "Ｆｕｌｌ-width ½ dose", "tab\there\x00nul", "IL‑6 (≥2)"]


def test_uncased_lowercases_and_strips_accents():
    assert normalize_text("Café Ärzte NAÏVE") == "cafe arzte naive"


def test_compatibility_forms_fold_micro_sign_and_ligatures():
    assert normalize_text("5 µg ﬁbrosis") == "5 μg fibrosis"  # micro sign → Greek mu, ligature split


def test_control_characters_removed_and_tabs_become_spaces():
    assert normalize_text("a\tb\x00c\ufffd") == "a bc"


def test_cased_keeps_case_and_accents():
    assert normalize_text("Café µg", lowercase=False) == "Café μg"


def test_normalisation_is_idempotent():
    for text in SAMPLES:
        once = normalize_text(text)
        assert normalize_text(once) == once


def test_tokenizer_gives_same_ids_for_raw_and_normalised_text():
    words = sorted({w for text in SAMPLES for w in normalize_text(text).split()} | set("abcdefghijklmnopqrstuvwxyz"))
    tokenizer = build_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    for text in SAMPLES:
        assert tokenizer.encode(text).ids == tokenizer.encode(normalize_text(text)).ids


AWKWARD = ["ΣΊΣΥΦΟΣ ΟΔΟΣ", "Cafe\u0301 E\u0301COLE", "a\u0323\u0307b", "=\u0338 ≠", "가 \u1100\u1161 ᄀ", "中文テスト",
           "ﬁ µg ½ Ⅸ", "İstanbul ß ẞ", "x\u200by\u00adz\x00\x0b\x7f\ufffd", "tab\tcr\rnl\n", "ǅ ǈ", "\u0301start",
           "ｆｕｌｌ", "ﾊﾟ ﾊ\uff9f", "\u1e9b\u0323", "x\u0e33 \u0b47\u0b3e"]


def _tokenizers(texts, lowercase):
    from engine.shards.vocab import without_normalizer
    words = sorted({w for t in texts for w in normalize_text(t, lowercase).split()} | set("abcdefghijklmnopqrstuvwxyz"))
    full = build_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words], lowercase)
    return full, without_normalizer(full)


def test_fast_normaliser_gives_the_tokenizer_the_same_ids_as_the_real_one():
    from engine.corpus.normalize import FastNormalizer
    for lowercase in (True, False):
        fast = FastNormalizer(lowercase)
        full, bare = _tokenizers(AWKWARD, lowercase)
        for text in AWKWARD:
            prepared = fast(text)
            if prepared is not None:
                assert bare.encode(prepared).ids == full.encode(text).ids, (lowercase, text)


def test_fast_normaliser_declines_text_whose_marks_depend_on_context():
    from engine.corpus.normalize import FastNormalizer
    assert FastNormalizer(True)("\u0b47\u0b3e") is None  # spacing mark (Mc): order matters even uncased
    assert FastNormalizer(False)("Cafe\u0301") is None  # cased keeps composition
    assert FastNormalizer(True)("Cafe\u0301") == "cafe"
