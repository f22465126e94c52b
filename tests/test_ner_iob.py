"""Tag schemes: IOB2 accepted, IOB1 converted, strict errors name file and line, repair warns (dialects: test_ner_dialects)."""
from __future__ import annotations

import pytest

from engine.ner.conll import read_conll
from engine.ner.errors import NerError
from engine.ner.iob import detect_scheme, iob1_to_iob2, normalise_tags
from engine.ner.tasks import load_task


def _file(tmp_path, text, name="train.tsv"):
    (tmp_path / name).write_text(text)
    return read_conll(tmp_path / name)


def test_iob1_to_iob2_marks_entity_starts_and_keeps_b_between_adjacent_entities():
    tags = ["I-C", "I-C", "B-C", "O", "I-D", "I-C", "I-C"]
    assert iob1_to_iob2(tags) == ["B-C", "I-C", "B-C", "O", "B-D", "B-C", "I-C"]


def test_iob1_file_is_detected_and_converted(tmp_path):
    data = _file(tmp_path, "a\tI-C\nb\tI-C\nc\tO\nd\tI-D\n\ne\tI-C\nf\tB-C\n\n")
    report = normalise_tags(data)
    assert report.scheme == "iob1"
    assert [s.tags for s in data.sentences] == [["B-C", "I-C", "O", "B-D"], ["B-C", "B-C"]]


def test_valid_iob2_file_is_left_unchanged(tmp_path):
    data = _file(tmp_path, "a\tB-C\nb\tI-C\nc\tO\nd\tB-D\n\n")
    assert detect_scheme(data) == "iob2"
    assert normalise_tags(data).repaired == 0
    assert data.sentences[0].tags == ["B-C", "I-C", "O", "B-D"]


def test_i_after_o_in_an_iob2_file_is_an_error_naming_file_and_line(tmp_path):
    data = _file(tmp_path, "a\tB-C\nb\tO\n\nc\tO\nd\tI-C\n\n")
    with pytest.raises(NerError, match=r"train\.tsv:5: I-C follows O"):
        normalise_tags(data)


def test_i_of_another_type_is_an_error_in_strict_mode(tmp_path):
    data = _file(tmp_path, "a\tB-C\nb\tI-D\n\n")
    with pytest.raises(NerError, match=r"train\.tsv:2: I-D follows B-C"):
        normalise_tags(data)


def test_repair_turns_the_bad_i_into_b_with_a_warning(tmp_path):
    data = _file(tmp_path, "a\tB-C\nb\tO\nc\tI-C\nd\tI-C\n\n")
    with pytest.warns(UserWarning, match="repaired 1"):
        report = normalise_tags(data, repair=True)
    assert report.repaired == 1 and data.sentences[0].tags == ["B-C", "O", "B-C", "I-C"]


@pytest.mark.parametrize("tag", ["Chemical", "B_Chemical", "B-", "X-Chemical", "b-Chemical"])
def test_unknown_tag_scheme_is_an_error_naming_file_and_line(tmp_path, tag):
    data = _file(tmp_path, f"a\tO\nb\t{tag}\n\n")
    with pytest.raises(NerError, match=r"train\.tsv:2: tag .* is not in a known scheme"):
        normalise_tags(data)


def _task(tmp_path, train, devel, test):
    folder = tmp_path / "data" / "MyTask"
    folder.mkdir(parents=True)
    for name, text in (("train", train), ("devel", devel), ("test", test)):
        (folder / f"{name}.tsv").write_text(text)
    return tmp_path / "data"


def test_label_set_comes_from_train_with_o_first(tmp_path):
    root = _task(tmp_path, "a\tB-Z\nb\tB-A\nc\tI-A\n\n", "a\tO\n\n", "a\tB-A\n\n")
    assert load_task(root, "mytask").labels == ["O", "B-A", "B-Z", "I-A"]


def test_test_label_absent_from_train_is_an_error_naming_file_and_line(tmp_path):
    root = _task(tmp_path, "a\tB-A\nb\tO\n\n", "a\tO\n\n", "a\tO\n\nb\tB-A\nc\tI-A\n\n")
    with pytest.raises(NerError, match=r"test\.tsv:4: label 'I-A' does not occur in train"):
        load_task(root, "mytask")


def test_missing_task_folder_names_the_task(tmp_path):
    root = _task(tmp_path, "a\tO\n\n", "a\tO\n\n", "a\tO\n\n")
    with pytest.raises(NerError, match="no folder for task 'bc2gm'"):
        load_task(root, "bc2gm")


def test_quick_run_slice_keeps_the_label_set_of_the_whole_train_file(tmp_path):
    root = _task(tmp_path, "a\tO\n\nb\tB-A\n\n", "a\tO\n\n", "b\tB-A\n\n")
    task = load_task(root, "mytask", max_train_sentences=1)
    assert len(task.splits["train"].sentences) == 1 and task.labels == ["O", "B-A"]
