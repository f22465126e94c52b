"""Parquet and CSV/TSV corpora: a row is a document, text from named columns, one-line errors naming file and row.

The acceptance check: `prepare_data.py` on Parquet and CSV versions of the demo corpus builds the
very shards of the .txt build (same manifest checksums).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.corpus.demo import write_demo_corpus
from engine.corpus.readers import CorpusError, iter_documents
from engine.corpus.tabular import TableFields

SCRIPT = Path(__file__).resolve().parents[1] / "engine" / "prepare_data.py"


def _parquet(path, columns, row_group_size=2):
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def _raw(path, data: bytes):
    path.write_bytes(data)
    return path


def _csv(path, rows, delimiter=","):
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def test_parquet_rows_join_title_and_abstract_over_row_groups(tmp_path):
    path = _parquet(tmp_path / "pubmed.parquet", {
        "pmid": ["11", "12", "13", "14", "15"],
        "title": ["T one", "T two", None, "  ", "T five"],
        "abstract": ["A one", None, "A three", " ", "A five\nsecond line"],
    })
    docs = list(iter_documents(path, fields=TableFields(("title", "abstract"), "pmid")))
    # a null or blank field is left out; a row with no text at all (14) is skipped
    assert docs == [("11", "T one\nA one"), ("12", "T two"), ("13", "A three"), ("15", "T five\nA five\nsecond line")]


def test_parquet_without_id_field_names_documents_by_file_and_row(tmp_path):
    path = _parquet(tmp_path / "x.parquet", {"text": ["a", "", "c"]})
    assert list(iter_documents(path)) == [("x.parquet:1", "a"), ("x.parquet:3", "c")]


def test_csv_and_tsv_with_quoted_multi_line_fields(tmp_path):
    rows = [["id", "title", "abstract", "year"], ["1", "Title, with comma", "line one\nline \"two\"", "2001"],
            ["2", "Only title", "", "2002"]]
    fields = TableFields.parse("title,abstract", "id")
    expected = [("1", "Title, with comma\nline one\nline \"two\""), ("2", "Only title")]
    assert list(iter_documents(_csv(tmp_path / "a.csv", rows), fields=fields)) == expected
    assert list(iter_documents(_csv(tmp_path / "a.tsv", rows, "\t"), fields=fields)) == expected


@pytest.mark.parametrize("make,fields,match", [
    (lambda p: _parquet(p / "x.parquet", {"body": ["a"]}), TableFields(), r"x\.parquet: no column 'text' \(columns: body\)"),
    (lambda p: _parquet(p / "x.parquet", {"text": [1, 2]}), TableFields(), r"x\.parquet: column 'text' has type int64"),
    (lambda p: _parquet(p / "x.parquet", {"text": ["a", "b"], "id": ["1", None]}), TableFields(id="id"),
     r"x\.parquet: row 2: id field 'id' is empty"),
    (lambda p: _raw(p / "x.parquet", b"PAR1 not really parquet"), TableFields(),
     r"x\.parquet: cannot read Parquet"),
    (lambda p: _csv(p / "x.csv", [["id", "body"], ["1", "a"]]), TableFields(), r"x\.csv:1: header has no column 'text'"),
    (lambda p: _csv(p / "x.csv", [["id", "text"], ["1", "a"], ["2", "b", "extra"]]), TableFields(),
     r"x\.csv:3: row 2 has 3 fields, the header has 2"),
    (lambda p: _raw(p / "x.csv", b"text\nfine\nbad \xff byte\n"), TableFields(),
     r"x\.csv: row \d: undecodable bytes \(not UTF-8\)"),
    (lambda p: _raw(p / "x.csv", b'text,id\n"ok",1\n"broken"x,2\n'), TableFields(),
     r"x\.csv: row 2: malformed CSV"),
    (lambda p: _raw(p / "x.tsv", b""), TableFields(), r"x\.tsv: empty file \(no header row\)"),
])
def test_malformed_table_is_one_error_naming_file_and_row(tmp_path, make, fields, match):
    path = make(tmp_path)
    with pytest.raises(CorpusError, match=match) as info:
        list(iter_documents(path, fields=fields))
    assert "\n" not in str(info.value)


def test_repeated_or_empty_text_fields_are_refused():
    with pytest.raises(CorpusError, match="repeated"):
        TableFields.parse("title,title", None)
    with pytest.raises(CorpusError, match="non-empty"):
        TableFields.parse("title,", None)


def _prepare(corpus, out, *extra):
    result = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(corpus), "--out", str(out), "--vocab-size",
                             "400", "--seq-len", "64", "128", "--valid-fraction", "0.1", "--quiet", *extra],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "manifest.json").read_text())


def test_parquet_and_csv_corpora_build_the_shards_of_the_txt_build(tmp_path):
    txt = write_demo_corpus(tmp_path / "txt", num_docs=150)
    ids = sorted(p.stem for p in txt.glob("*.txt"))
    texts = [(txt / f"{i}.txt").read_text(encoding="utf-8") for i in ids]
    titles, abstracts = zip(*(t.split("\n", 1) for t in texts))
    assert all(a.strip() for a in abstracts)  # every document has both parts, so joining restores it exactly
    _parquet(tmp_path / "demo.parquet", {"pmid": ids, "title": list(titles), "abstract": list(abstracts)},
             row_group_size=40)
    _csv(tmp_path / "demo.csv", [["doc", "text"], *zip(ids, texts)])

    reference = _prepare(txt, tmp_path / "from_txt")
    from_parquet = _prepare(tmp_path / "demo.parquet", tmp_path / "from_parquet",
                            "--text-field", "title,abstract", "--id-field", "pmid")
    from_csv = _prepare(tmp_path / "demo.csv", tmp_path / "from_csv", "--id-field", "doc")
    assert reference["corpus"]["documents"] == 150 and reference["splits"]["valid"]["documents"] > 0
    for manifest in (from_parquet, from_csv):
        assert manifest["files"] == reference["files"]  # every shard, vocabulary and index file, by sha256
        assert manifest["corpus"]["sha256"] == reference["corpus"]["sha256"]  # same (id, text) stream


def test_prepare_data_names_file_and_row_of_a_bad_table_and_writes_nothing(tmp_path):
    _csv(tmp_path / "bad.csv", [["text"], ["fine words here"], ["a", "b"]])
    result = subprocess.run([sys.executable, str(SCRIPT), "--corpus", str(tmp_path / "bad.csv"), "--out",
                             str(tmp_path / "out"), "--vocab-size", "100", "--quiet"], capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'bad.csv'}:3: row 2 has 2 fields, the header has 1"]
    assert not (tmp_path / "out").exists()
