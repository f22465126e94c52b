"""The context finder: which sentences a new token gets, how many, and in what order."""
from __future__ import annotations

from engine.distill.contexts import Context, coverage, find_contexts
from engine.distill.vocab import make_tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "drug", "caused", "was", "given", ".",
         "ritux", "##imab", "inflix", "nephrotoxicity", "##s", "r", "##i", "##t", "##u", "##x", "##m", "##a", "##b"]


def _finder(documents, targets, k=3, **kwargs):
    tokenizer = make_tokenizer(VOCAB, lowercase=True).backend_tokenizer
    ids = [VOCAB.index(t) for t in targets]
    return {VOCAB[i]: contexts for i, contexts in find_contexts(
        enumerate(documents), tokenizer, ids, k, **kwargs).items()}


def test_whole_word_token_gets_the_sentence_it_occurs_in():
    found = _finder(["The drug was given. Nephrotoxicity was caused by the drug. Another one."], ["nephrotoxicity"])
    (context,) = found["nephrotoxicity"]
    assert context.text == "nephrotoxicity was caused by the drug."
    assert context.text[context.start:context.end] == "nephrotoxicity"


def test_piece_is_found_inside_every_word_that_uses_it():
    found = _finder(["rituximab was given.", "then infliximab was given."], ["##imab"])
    spans = [c.text[c.start:c.end] for c in found["##imab"]]
    assert [c.text for c in found["##imab"]] == ["rituximab was given.", "then infliximab was given."]
    assert spans == ["imab", "imab"]


def test_piece_span_points_at_the_piece_not_the_whole_word():
    (context,) = _finder(["x rituximab."], ["##imab"])["##imab"]
    assert (context.start, context.end) == (7, 11)


def test_at_most_k_contexts_and_one_per_document():
    documents = [f"the drug nephrotoxicity {i}. nephrotoxicity again {i}." for i in range(5)]
    found = _finder(documents, ["nephrotoxicity"], k=3)
    assert [c.text for c in found["nephrotoxicity"]] == [f"the drug nephrotoxicity {i}." for i in range(3)]


def test_token_absent_from_corpus_has_no_context_and_counts_in_coverage():
    found = find_contexts(enumerate(["the drug."]), make_tokenizer(VOCAB, True).backend_tokenizer,
                          [VOCAB.index("nephrotoxicity"), VOCAB.index("drug")], k=2)
    assert found[VOCAB.index("nephrotoxicity")] == []
    assert coverage(found)["with_context"] == 1


def test_long_sentence_is_cut_around_the_token_within_max_chars():
    words = " ".join(f"w{i}" for i in range(200))
    (context,) = _finder([f"{words} nephrotoxicity {words}."], ["nephrotoxicity"], max_chars=60)["nephrotoxicity"]
    assert len(context.text) <= 70
    assert context.text[context.start:context.end] == "nephrotoxicity"


def test_choice_within_a_document_follows_sorted_words_not_set_order():
    """Hits of one document are visited in sorted order, so PYTHONHASHSEED cannot change the pick."""
    (context,) = _finder(["rituximab first. infliximab second."], ["##imab"], k=1)["##imab"]
    assert isinstance(context, Context)
    assert context.text == "infliximab second."
