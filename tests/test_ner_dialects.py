"""NER files as distributed in the field: IOB1, IOBES/BIOES, BILOU, bare B/I/O, -DOCSTART-, CRLF.

Each dialect is read into IOB2 (the same tags whatever the dialect), written back byte for byte,
scores gold-as-prediction F1 = 1.0 through reader → writer → reader → scorer, and gets its
predictions written in its own dialect.
"""
from __future__ import annotations

import pytest

from engine.ner.conll import read_conll, write_conll, write_predictions
from engine.ner.errors import NerError
from engine.ner.iob import normalise_tags
from engine.ner.schemes import from_iob2, to_iob2
from engine.ner.scoring import score
from engine.ner.tasks import load_task

WORDS = [["Aspirin", "and", "ibuprofen", "cause", "renal", "failure", "."],
         ["breast", "cancer", "lung", "cancer", "and", "acute", "kidney", "injury"],
         ["No", "entity", "here"]]
IOB2 = [["B-C", "O", "B-C", "O", "B-D", "I-D", "O"],
        ["B-D", "I-D", "B-D", "I-D", "O", "B-D", "I-D", "I-D"],
        ["O", "O", "O"]]
# The same annotation as each dialect writes it (adjacent same-type entities, one-token entities).
DIALECTS = {
    "iob2": IOB2,
    "iob1": [["I-C", "O", "I-C", "O", "I-D", "I-D", "O"],
             ["I-D", "I-D", "B-D", "I-D", "O", "I-D", "I-D", "I-D"], ["O", "O", "O"]],
    "iobes": [["S-C", "O", "S-C", "O", "B-D", "E-D", "O"],
              ["B-D", "E-D", "B-D", "E-D", "O", "B-D", "I-D", "E-D"], ["O", "O", "O"]],
    "bilou": [["U-C", "O", "U-C", "O", "B-D", "L-D", "O"],
              ["B-D", "L-D", "B-D", "L-D", "O", "B-D", "I-D", "L-D"], ["O", "O", "O"]],
}
# Bare tags (one entity type, like BioBERT's BC2GM): the disease annotation only.
UNTYPED_IOB2 = [[t if t.endswith("D") else "O" for t in tags] for tags in IOB2]
UNTYPED = {"iob2": [[t[0] for t in tags] for tags in UNTYPED_IOB2],
           "iobes": [["O", "O", "O", "O", "B", "E", "O"], ["B", "E", "B", "E", "O", "B", "I", "E"], ["O", "O", "O"]]}


def _text(tags, newline="\n", docstart=False, words=WORDS):
    """A CoNLL file: optional -DOCSTART- lines before sentence 0 and 2, each followed by a blank line."""
    parts = []
    for i, (ws, ts) in enumerate(zip(words, tags)):
        if docstart and i in (0, 2):
            parts.append(f"-DOCSTART-\tO{newline}{newline}")
        parts.extend(f"{w}\t{t}{newline}" for w, t in zip(ws, ts))
        parts.append(newline)
    return "".join(parts)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


CASES = [(scheme, newline, docstart) for scheme in DIALECTS for newline in ("\n", "\r\n") for docstart in (False, True)]


@pytest.mark.parametrize("scheme,newline,docstart", CASES)
def test_each_dialect_reads_as_the_same_iob2_and_writes_back_byte_for_byte(tmp_path, scheme, newline, docstart):
    original = _write(tmp_path / "train.tsv", _text(DIALECTS[scheme], newline, docstart))
    data = read_conll(original)
    report = normalise_tags(data)
    assert report.scheme == scheme
    assert [s.tags for s in data.sentences] == IOB2
    assert [s.words for s in data.sentences] == WORDS  # -DOCSTART- is a separator, not a token
    write_conll(tmp_path / "back.tsv", data)
    assert (tmp_path / "back.tsv").read_bytes() == original.read_bytes()


def test_docstart_lines_anywhere_are_kept_in_place(tmp_path):
    text = "-DOCSTART- -X- O\n\n-DOCSTART- -X- O\n\na\tB-C\n\nb\tO\n-DOCSTART- -X- O\n\nc\tO\n\n-DOCSTART- -X- O\n\n"
    data = read_conll(_write(tmp_path / "train.tsv", text))
    assert [s.words for s in data.sentences] == [["a"], ["b"], ["c"]]
    normalise_tags(data)
    write_conll(tmp_path / "back.tsv", data)
    # the one change: a -DOCSTART- glued to a sentence gets the blank line of the canonical layout
    assert (tmp_path / "back.tsv").read_text() == text.replace("b\tO\n-DOCSTART-", "b\tO\n\n-DOCSTART-")


@pytest.mark.parametrize("scheme", UNTYPED)
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_bare_tags_take_the_given_type_and_write_back_bare(tmp_path, scheme, newline):
    original = _write(tmp_path / "train.tsv", _text(UNTYPED[scheme], newline, docstart=True))
    data = read_conll(original)
    report = normalise_tags(data, entity_type="Gene")
    assert report.scheme == f"{scheme} untyped (type Gene)"
    assert [s.tags for s in data.sentences] == [[t.replace("-D", "-Gene") for t in tags] for tags in UNTYPED_IOB2]
    write_conll(tmp_path / "back.tsv", data)
    assert (tmp_path / "back.tsv").read_bytes() == original.read_bytes()


@pytest.mark.parametrize("scheme", [*DIALECTS, "untyped"])
def test_gold_as_prediction_scores_one_and_prediction_file_keeps_the_users_dialect(tmp_path, scheme):
    """Task reader → IOB2 → predictions writer → reader → both columns to IOB2 → scorer."""
    tags = UNTYPED["iob2"] if scheme == "untyped" else DIALECTS[scheme]
    for split in ("train", "devel", "test"):
        _write(tmp_path / "data" / "BC2GM" / f"{split}.tsv", _text(tags, "\r\n", docstart=True))
    task = load_task(tmp_path / "data", "bc2gm")
    test = task.splits["test"]
    gold = [s.tags for s in test.sentences]
    if scheme == "untyped":
        assert task.labels == ["O", "B-BC2GM", "I-BC2GM"]  # type defaults to the task folder's name
    write_predictions(tmp_path / "pred.tsv", test, gold)
    written = (tmp_path / "pred.tsv").read_bytes().decode()
    assert written.count("\r\n") == written.count("\n") and written.count("-DOCSTART-") == 2
    back = read_conll(tmp_path / "pred.tsv")
    assert [[m[0] for m in s.middle] for s in back.sentences] == tags  # gold column as the user wrote it
    assert [s.tags for s in back.sentences] == tags  # predictions in the same dialect
    found = "iob2" if scheme == "untyped" else scheme
    pred = [to_iob2(s.tags, found) for s in back.sentences]
    gold_back = [to_iob2([m[0] for m in s.middle], found) for s in back.sentences]
    if scheme == "untyped":
        pred = [[t if t == "O" else f"{t}-BC2GM" for t in s] for s in pred]
        gold_back = [[t if t == "O" else f"{t}-BC2GM" for t in s] for s in gold_back]
    assert gold_back == gold
    assert score(gold, pred)["f1"] == 1.0 and score(gold, pred)["support"] == 6 - 2 * (scheme == "untyped")


@pytest.mark.parametrize("scheme", ["iob1", "iobes", "bilou"])
def test_a_dialect_file_and_its_iob2_conversion_score_identically(tmp_path, scheme):
    wrong = [["B-C", "O", "O", "O", "B-D", "O", "O"],  # one missed chemical, one boundary error
             ["B-D", "I-D", "I-D", "I-D", "O", "B-D", "I-D", "I-D"],  # two entities merged into one
             ["O", "B-C", "O"]]  # one false positive
    from_dialect = read_conll(_write(tmp_path / "d.tsv", _text(DIALECTS[scheme])))
    from_iob2_file = read_conll(_write(tmp_path / "i.tsv", _text(IOB2)))
    normalise_tags(from_dialect)
    normalise_tags(from_iob2_file)
    mine = score([s.tags for s in from_dialect.sentences], wrong)
    theirs = score([s.tags for s in from_iob2_file.sentences], wrong)
    assert mine == theirs and 0 < mine["f1"] < 1


def test_predictions_that_open_an_entity_with_i_are_written_as_its_start():
    assert from_iob2(["O", "I-D", "I-D", "O", "I-C"], "iobes") == ["O", "B-D", "E-D", "O", "S-C"]
    assert from_iob2(["B-C", "I-D", "O"], "bilou") == ["U-C", "U-D", "O"]
    assert from_iob2(["B-C", "B-C", "I-C", "I-D"], "iob1") == ["I-C", "B-C", "I-C", "I-D"]


def test_scheme_override_wins_over_detection(tmp_path):
    data = read_conll(_write(tmp_path / "train.tsv", _text(DIALECTS["iob1"])))
    with pytest.raises(NerError, match=r"train\.tsv:1: I-C follows sentence start \(invalid IOB2"):
        normalise_tags(data, scheme="iob2")
    data = read_conll(_write(tmp_path / "train.tsv", _text(DIALECTS["iobes"])))
    assert normalise_tags(data, scheme="bioes").scheme == "iobes"


@pytest.mark.parametrize("text,match", [
    ("a\tS-C\nb\tB-C\nc\tO\n\n", r"train\.tsv:3: O after an unclosed C entity \(invalid IOBES"),
    ("a\tS-C\nb\tB-C\n\n", r"train\.tsv:2: sentence ends inside a C entity"),
    ("a\tS-C\nb\tE-C\n\n", r"train\.tsv:2: E-C does not continue an entity"),
    ("a\tB-C\nb\tE-D\nc\tS-C\n\n", r"train\.tsv:2: E-D after an unclosed C entity"),
    ("a\tS-C\nb\tU-C\n\n", r"train\.tsv:2: mixes IOBES S- \(line 1\) with BILOU U- \(line 2\)"),
    ("a\tB-C\nb\tI\n\n", r"train\.tsv:2: tag 'I' mixes typed tags \(line 1\) with bare ones \(line 2\)"),
])
def test_malformed_dialect_is_an_error_naming_file_and_line(tmp_path, text, match):
    data = read_conll(_write(tmp_path / "train.tsv", text))
    with pytest.raises(NerError, match=match):
        normalise_tags(data)


def test_forced_scheme_refuses_tags_of_another_scheme(tmp_path):
    data = read_conll(_write(tmp_path / "train.tsv", "a\tU-C\nb\tO\n\n"))
    with pytest.raises(NerError, match=r"train\.tsv:1: tag 'U-C' is not IOBES"):
        normalise_tags(data, scheme="iobes")


@pytest.mark.parametrize("scheme", ["iob1", "iobes", "bilou"])
def test_shared_data_converted_to_a_dialect_reads_back_as_the_original(shared_data, tmp_path, scheme):
    original = read_conll(shared_data("ner", "NCBI-disease", "test.tsv"))
    normalise_tags(original)
    converted = "".join("".join(f"{w}\t{t}\n" for w, t in zip(s.words, from_iob2(s.tags, scheme))) + "\n"
                        for s in original.sentences)
    data = read_conll(_write(tmp_path / "test.tsv", converted))
    assert normalise_tags(data).scheme == scheme
    assert [s.tags for s in data.sentences] == [s.tags for s in original.sentences]
