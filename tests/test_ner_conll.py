"""CoNLL reader/writer: exact round trip of the shared BLURB sets, their published counts, bad files."""
from __future__ import annotations

import pytest

from engine.ner.conll import read_conll, write_conll, write_predictions
from engine.ner.errors import NerError
from engine.ner.iob import count_entities
from tests.conftest import shared_path

# ../shared/data/README.md: sentences, tokens, entities per split.
SHARED_COUNTS = {
    ("BC5CDR-chem", "train"): (4560, 118170, 5203), ("BC5CDR-chem", "devel"): (4581, 117453, 5347),
    ("BC5CDR-chem", "test"): (4797, 124750, 5385),
    ("BC5CDR-disease", "train"): (4560, 118170, 4182), ("BC5CDR-disease", "devel"): (4581, 117453, 4246),
    ("BC5CDR-disease", "test"): (4797, 124750, 4424),
    ("NCBI-disease", "train"): (5424, 135701, 5134), ("NCBI-disease", "devel"): (923, 23969, 787),
    ("NCBI-disease", "test"): (940, 24497, 960),
}


@pytest.mark.parametrize("task,split", sorted(SHARED_COUNTS))
def test_shared_file_round_trips_byte_for_byte_and_matches_published_counts(task, split, tmp_path):
    path = shared_path("ner", task, f"{split}.tsv")
    data = read_conll(path)
    sentences = data.sentences
    assert (len(sentences), sum(len(s.words) for s in sentences), count_entities([s.tags for s in sentences])) \
        == SHARED_COUNTS[task, split]
    write_conll(tmp_path / "copy.tsv", data)
    assert (tmp_path / "copy.tsv").read_bytes() == path.read_bytes()


def test_space_separated_file_round_trips_and_keeps_its_separator(tmp_path):
    text = "Aspirin B-Chemical\nworks O\n\nfine O\n\n"
    (tmp_path / "a.txt").write_text(text)
    data = read_conll(tmp_path / "a.txt")
    assert data.separator == " " and [s.words for s in data.sentences] == [["Aspirin", "works"], ["fine"]]
    write_conll(tmp_path / "b.txt", data)
    assert (tmp_path / "b.txt").read_text() == text


def test_multi_column_file_takes_the_last_column_as_tag_and_round_trips(tmp_path):
    text = "Aspirin\tNN\tx\tB-Chemical\ntoxicity\tNN\ty\tO\n\n"
    (tmp_path / "a.tsv").write_text(text)
    data = read_conll(tmp_path / "a.tsv")
    assert data.sentences[0].tags == ["B-Chemical", "O"]
    assert data.sentences[0].middle == [("NN", "x"), ("NN", "y")]
    write_conll(tmp_path / "b.tsv", data)
    assert (tmp_path / "b.tsv").read_text() == text


def test_token_line_numbers_are_kept_for_error_messages(tmp_path):
    (tmp_path / "a.tsv").write_text("\n\na\tO\nb\tO\n\n\nc\tO\n")
    data = read_conll(tmp_path / "a.tsv")
    assert [s.lines for s in data.sentences] == [[3, 4], [7]]


def test_empty_file_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "train.tsv").write_text("\n\n")
    with pytest.raises(NerError, match=r"train\.tsv: empty file"):
        read_conll(tmp_path / "train.tsv")


def test_line_with_wrong_number_of_columns_is_an_error_naming_file_and_line(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tO\nb\tO\n\nc\tx\tO\n")
    with pytest.raises(NerError, match=r"train\.tsv:4: expected 2 columns"):
        read_conll(tmp_path / "train.tsv")


def test_line_with_a_single_column_is_an_error(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tO\nlonely\n")
    with pytest.raises(NerError, match=r"train\.tsv:2: expected 'token<TAB>tag'"):
        read_conll(tmp_path / "train.tsv")


def test_prediction_file_has_token_gold_pred_and_reads_back(tmp_path):
    (tmp_path / "g.tsv").write_text("Aspirin\tB-Chemical\nworks\tO\n\n")
    write_predictions(tmp_path / "p.tsv", read_conll(tmp_path / "g.tsv"), [["O", "O"]])
    assert (tmp_path / "p.tsv").read_text() == "Aspirin\tB-Chemical\tO\nworks\tO\tO\n\n"
    back = read_conll(tmp_path / "p.tsv").sentences[0]
    assert back.middle == [("B-Chemical",), ("O",)] and back.tags == ["O", "O"]
