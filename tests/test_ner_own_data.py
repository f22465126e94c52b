"""`evaluate_ner.py` end to end on users' own NER files: bare B/I/O, IOBES and BILOU with CRLF and
-DOCSTART-, and the fine-tuning progress bar. A tiny random BERT keeps each run to seconds.
"""
from __future__ import annotations

import json
import re

import pytest

from engine.corpus.demo import write_demo_ner
from engine.evaluate_ner import main
from engine.ner.conll import read_conll
from engine.ner.schemes import from_iob2
from tests.tiny_model import write_tiny_bert

QUICK = ["--epochs", "2", "--lr", "1e-2", "--batch-size", "8", "--max-length", "64", "--seeds", "1"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo NER set (typed IOB2: Chemical, Disease) and a tiny BERT that knows half its words."""
    root = tmp_path_factory.mktemp("own_data")
    iob2 = write_demo_ner(root / "iob2", sizes=(80, 30, 30))
    words = sorted({w for s in read_conll(iob2 / "train.tsv").sentences for w in s.words})
    return root, iob2, write_tiny_bert(root / "tiny", words[::2])


def _rewrite(source, target, tags_of, newline="\n", docstart_every=0):
    """Each split of `source` with its tags mapped by `tags_of`, line ending `newline`, a -DOCSTART- every N sentences."""
    target.mkdir(parents=True)
    for split in ("train", "devel", "test"):
        parts = []
        for i, sentence in enumerate(read_conll(source / f"{split}.tsv").sentences):
            if docstart_every and i % docstart_every == 0:
                parts.append(f"-DOCSTART- -X- O{newline}{newline}")
            parts.extend(f"{w}\t{t}{newline}" for w, t in zip(sentence.words, tags_of(sentence.tags)))
            parts.append(newline)
        (target / f"{split}.tsv").write_bytes("".join(parts).encode())
    return target


def _unit(out, task):
    return json.loads((out / task / "seed1" / "result.json").read_text())


def _run(model, data, out, *extra):
    main(["--model", str(model), "--data", str(data), "--out", str(out), *QUICK, *extra])
    return out


@pytest.mark.slow
def test_untyped_bio_task_is_evaluated_end_to_end_with_the_folder_name_as_type(demo, tmp_path, capsys):
    root, iob2, model = demo
    bare = lambda tags: [t[0] if t.endswith("-Disease") else "O" for t in tags]  # BioBERT style: one type, no suffix
    task = _rewrite(iob2, tmp_path / "data" / "BC2GM", bare)
    out = _run(model, tmp_path / "data", tmp_path / "out")
    unit = _unit(out, "bc2gm")
    assert unit["labels"] == ["O", "B-BC2GM", "I-BC2GM"]
    assert unit["schemes"] == {split: "iob2 untyped (type BC2GM)" for split in ("train", "devel", "test")}
    assert list(unit["test"]["per_type"]) == ["BC2GM"] and unit["test"]["support"] > 0
    assert "bc2gm: tags train iob2 untyped (type BC2GM)" in capsys.readouterr().out
    assert "test iob2 untyped (type BC2GM)" in (out / "results.md").read_text()
    gold_file = read_conll(task / "test.tsv")
    predictions = read_conll(out / "bc2gm" / "seed1" / "test.pred.tsv")
    assert [[m[0] for m in s.middle] for s in predictions.sentences] == [s.tags for s in gold_file.sentences]
    assert {t for s in predictions.sentences for t in s.tags} <= {"B", "I", "O"}  # predictions bare like the input

    typed = _unit(_run(model, tmp_path / "data", tmp_path / "gene", "--entity-type", "Gene"), "bc2gm")
    assert typed["labels"] == ["O", "B-Gene", "I-Gene"]
    assert (typed["devel"]["f1"], typed["test"]["f1"]) == (unit["devel"]["f1"], unit["test"]["f1"])


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["iobes", "bilou"])
def test_iobes_and_bilou_tasks_score_exactly_like_their_iob2_version(demo, tmp_path, scheme):
    root, iob2, model = demo
    reference = _unit(_run(model, root, tmp_path / "iob2_out", "--tasks", "iob2"), "iob2")
    task = _rewrite(iob2, tmp_path / "data" / "iob2", lambda tags: from_iob2(tags, scheme),
                    newline="\r\n", docstart_every=7)
    unit = _unit(_run(model, tmp_path / "data", tmp_path / "out"), "iob2")
    assert unit["schemes"] == {split: scheme for split in ("train", "devel", "test")}
    for key in ("devel", "test", "best_epoch", "labels"):
        assert unit[key] == reference[key]
    assert [h["train_loss"] for h in unit["recipe"]["history"]] == [h["train_loss"] for h in reference["recipe"]["history"]]
    written = (tmp_path / "out" / "iob2" / "seed1" / "test.pred.tsv").read_bytes().decode()
    original = (task / "test.tsv").read_bytes().decode()
    assert written.count("\r\n") == written.count("\n")
    assert [line for line in written.split("\r\n") if line.startswith("-DOCSTART-")] == \
        [line for line in original.split("\r\n") if line.startswith("-DOCSTART-")]
    predictions = read_conll(tmp_path / "out" / "iob2" / "seed1" / "test.pred.tsv")
    assert [[m[0] for m in s.middle] for s in predictions.sentences] == \
        [s.tags for s in read_conll(task / "test.tsv").sentences]  # gold column: the user's own tags


def test_fine_tuning_shows_a_progress_bar_with_steps_loss_and_eta(demo, tmp_path, capsys):
    root, iob2, model = demo
    out = _run(model, root, tmp_path / "out", "--tasks", "iob2", "--epochs", "1", "--batch-size", "4")
    err = capsys.readouterr().err
    steps = -(-_unit(out, "iob2")["train_windows"] // 4)  # one epoch, 4 windows per step
    assert re.search(rf"iob2 seed 1: +\d+%.*\| [1-9]\d*/{steps} \[\d\d:\d\d<\d\d:\d\d", err), err[-500:]  # ETA
    assert re.search(rf"iob2 seed 1: 100%.*\| {steps}/{steps} \[.*loss=\d+\.\d{{4}}", err), err[-500:]


def test_progress_bar_can_be_turned_off(demo, tmp_path, capsys):
    root, iob2, model = demo
    _run(model, root, tmp_path / "out", "--tasks", "iob2", "--epochs", "1", "--finetune.progress_bar=false")
    assert "iob2 seed 1:" not in capsys.readouterr().err
