"""Corpus readers: each format, document ids and order, streaming, and one-line errors on bad input."""
from __future__ import annotations

import gzip
import json

import pytest

from engine.corpus.readers import CorpusError, iter_documents
from tests.conftest import shared_path

PUBMED_XML = """<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2024//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_240101.dtd">
<PubmedArticleSet>
<PubmedArticle><MedlineCitation Status="MEDLINE"><PMID Version="1">101</PMID>
<Article><ArticleTitle>Cisplatin &amp; nephrotoxicity in <i>rats</i>.</ArticleTitle>
<Abstract><AbstractText Label="BACKGROUND">Cisplatin causes
 kidney injury.</AbstractText><AbstractText Label="RESULTS">Serum creatinine rose 10<sup>3</sup>-fold.</AbstractText></Abstract>
</Article></MedlineCitation></PubmedArticle>
<PubmedArticle><MedlineCitation><PMID Version="1">102</PMID>
<Article><ArticleTitle>Title only.</ArticleTitle></Article></MedlineCitation></PubmedArticle>
</PubmedArticleSet>
"""


def test_txt_folder_yields_one_document_per_file_in_sorted_order_with_relative_ids(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third\nline", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert list(iter_documents(tmp_path)) == [("a", "first"), ("b", "second"), ("sub/c", "third\nline")]


def test_txt_files_holding_only_whitespace_are_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("  \n\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("text", encoding="utf-8")
    assert [doc_id for doc_id, _ in iter_documents(tmp_path)] == ["b"]


def test_jsonl_uses_id_field_else_file_and_line_and_skips_blank_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "x1", "text": "alpha"}) + "\n\n" + json.dumps({"text": "beta"}) + "\n",
                    encoding="utf-8")
    assert list(iter_documents(path)) == [("x1", "alpha"), ("docs.jsonl:3", "beta")]


def test_gzipped_jsonl_reads_like_plain(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": 7, "text": "gamma"}) + "\n")
    assert list(iter_documents(path)) == [("7", "gamma")]


def test_pubmed_xml_gz_gives_title_and_abstract_parts_with_pmid_ids(tmp_path):
    path = tmp_path / "pubmed24n0001.xml.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(PUBMED_XML)
    docs = list(iter_documents(path))
    assert docs == [
        ("101", "Cisplatin & nephrotoxicity in rats.\nCisplatin causes kidney injury.\nSerum creatinine rose 103-fold."),
        ("102", "Title only."),
    ]


def test_folder_mixing_formats_reads_each_file_by_its_name(tmp_path):
    (tmp_path / "a.txt").write_text("plain", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "j", "text": "json"}) + "\n", encoding="utf-8")
    (tmp_path / "c.xml").write_text(PUBMED_XML, encoding="utf-8")
    assert [doc_id for doc_id, _ in iter_documents(tmp_path)] == ["a", "j", "101", "102"]
    assert [doc_id for doc_id, _ in iter_documents(tmp_path, "jsonl")] == ["j"]


def test_undecodable_bytes_in_txt_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"line one\nline two\nbroken \xff\xfe here\n")
    with pytest.raises(CorpusError, match=r"bad\.txt:3: undecodable bytes"):
        list(iter_documents(tmp_path))


def test_undecodable_bytes_in_jsonl_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xc3\x28"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: undecodable bytes"):
        list(iter_documents(path))


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "cut off\n{"text": "fine"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"broken\.jsonl:2: malformed JSON line"):
        list(iter_documents(path))


def test_jsonl_line_without_text_field_names_file_and_line(tmp_path):
    path = tmp_path / "notext.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"notext\.jsonl:2: JSON line has no string 'text' field"):
        list(iter_documents(path))


def test_malformed_xml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text(PUBMED_XML.replace("<PMID Version=\"1\">102</PMID>", "<PMID>102</Title>"), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"broken\.xml:9: malformed XML"):
        list(iter_documents(path))


def test_corrupt_gzip_is_a_corpus_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.xml.gz"
    path.write_bytes(gzip.compress(PUBMED_XML.encode())[:60])
    with pytest.raises(CorpusError, match=r"cut\.xml\.gz"):
        list(iter_documents(path))


def test_missing_corpus_is_reported(tmp_path):
    with pytest.raises(CorpusError, match="corpus not found"):
        list(iter_documents(tmp_path / "nowhere"))


def test_folder_without_corpus_files_is_reported_empty(tmp_path):
    (tmp_path / "readme.md").write_text("not a corpus", encoding="utf-8")
    with pytest.raises(CorpusError, match="corpus is empty"):
        list(iter_documents(tmp_path))


def test_corpus_of_blank_documents_is_reported_empty(tmp_path):
    (tmp_path / "a.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no non-blank documents"):
        list(iter_documents(tmp_path))


def test_documents_stream_before_later_files_are_read(tmp_path):
    (tmp_path / "a.txt").write_text("good", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"\xff")
    documents = iter_documents(tmp_path)
    assert next(documents) == ("a", "good")
    with pytest.raises(CorpusError, match=r"b\.txt:1"):
        next(documents)


def test_shared_pmc_corpus_reads_one_document_per_non_blank_file():
    corpus = shared_path("corpus", "pmc_rct_fulltext")
    files = sorted(p.stem for p in corpus.glob("*.txt") if p.read_text(encoding="utf-8").strip())
    ids = [doc_id for doc_id, _ in iter_documents(corpus)]
    assert ids == files
    assert len(ids) > 4000
