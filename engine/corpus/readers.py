"""Streaming corpus readers: one document at a time, so a corpus of any size fits in memory.

Formats, chosen per file by its name when `fmt="auto"`:
- `txt`: a folder of `.txt` files, document = file (the shared PMC corpus), id = relative path
  without the suffix, files in sorted order;
- `jsonl`: `.jsonl` / `.jsonl.gz`, one JSON object per line with a string `text` field; id = its
  `id` field when present, else `<file name>:<line>`;
- `pubmed-xml`: PubMed baseline `.xml` / `.xml.gz`, document = title + abstract of one
  `PubmedArticle`, id = its PMID; parsed with `iterparse` and cleared as it goes;
- `parquet` (`.parquet`), `csv` (`.csv[.gz]`), `tsv` (`.tsv[.gz]`): document = row, text from the
  columns named by `TableFields` (default `text`), see `engine.corpus.tabular`.

Readers yield the text as stored (no normalisation: see `engine.corpus.normalize`). Anything that
cannot be read raises `CorpusError` with a one-line message naming the file (and line).
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Callable, Iterator, Literal
from xml.etree import ElementTree

from engine.corpus.errors import CorpusError
from engine.corpus.tabular import TableFields, read_delimited, read_parquet

Format = Literal["auto", "txt", "jsonl", "pubmed-xml", "parquet", "csv", "tsv"]
FORMATS = ("auto", "txt", "jsonl", "pubmed-xml", "parquet", "csv", "tsv")
_SUFFIXES = {"txt": (".txt",), "jsonl": (".jsonl", ".jsonl.gz"), "pubmed-xml": (".xml", ".xml.gz"),
             "parquet": (".parquet",), "csv": (".csv", ".csv.gz"), "tsv": (".tsv", ".tsv.gz")}


def file_format(path: Path) -> str | None:
    """The format a file name announces (`txt`, `jsonl`, `pubmed-xml`), or None."""
    name = path.name.lower()
    for fmt, suffixes in _SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    return None


def corpus_files(path: str | Path, fmt: Format = "auto") -> list[tuple[Path, str]]:
    """The (file, format) pairs a corpus path stands for, in the order documents are read.

    A folder contributes every file below it whose name matches `fmt` (any known format for
    `auto`), sorted by relative path; hidden files and other names are ignored.
    """
    if fmt not in FORMATS:
        raise CorpusError(f"unknown corpus format {fmt!r} (known: {', '.join(FORMATS)})")
    root = Path(path)
    if not root.exists():
        raise CorpusError(f"corpus not found: {root}")
    if root.is_file():
        found = file_format(root) if fmt == "auto" else fmt
        if found is None:
            raise CorpusError(f"{root}: cannot tell the corpus format from the file name "
                              f"(use .txt, .jsonl[.gz], .xml[.gz], .parquet, .csv[.gz], .tsv[.gz] or pass the format)")
        return [(root, found)]
    files = []
    for file in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if not file.is_file() or any(part.startswith(".") for part in file.relative_to(root).parts):
            continue
        found = file_format(file)
        if found is not None and (fmt == "auto" or found == fmt):
            files.append((file, found))
    if not files:
        wanted = "corpus" if fmt == "auto" else fmt
        raise CorpusError(f"corpus is empty: no {wanted} files (.txt, .jsonl, .xml, .parquet, .csv, .tsv) under {root}")
    return files


def _decode(data: bytes, path: Path, line_offset: int = 0) -> str:
    """UTF-8 text, or CorpusError naming the file and the line of the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line_offset + data.count(b"\n", 0, exc.start) + 1
        raise CorpusError(f"{path}:{line}: undecodable bytes (not UTF-8) at byte {exc.start}") from None
    return text[1:] if text.startswith("\ufeff") else text


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_txt(path: Path, doc_id: str) -> Iterator[tuple[str, str]]:
    """One document: the whole file (skipped when it holds only whitespace)."""
    text = _decode(path.read_bytes(), path)
    if text.strip():
        yield doc_id, text


def read_jsonl(path: Path) -> Iterator[tuple[str, str]]:
    """One document per non-blank line; the object must have a string `text` field."""
    try:
        with _open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                line = _decode(raw, path, lineno - 1)
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{path}:{lineno}: malformed JSON line: {exc.msg}") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise CorpusError(f"{path}:{lineno}: JSON line has no string 'text' field")
                doc_id = record.get("id")
                doc_id = str(doc_id) if isinstance(doc_id, (str, int)) else f"{path.name}:{lineno}"
                if record["text"].strip():
                    yield doc_id, record["text"]
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(f"{path}: cannot read: {exc}") from None


def _element_text(element: ElementTree.Element | None) -> str:
    """All text inside an element, inline markup (<i>, <sup>) included, whitespace collapsed."""
    return " ".join("".join(element.itertext()).split()) if element is not None else ""


def read_pubmed_xml(path: Path) -> Iterator[tuple[str, str]]:
    """Title + abstract of each `PubmedArticle` (one abstract part per line), id = PMID."""
    try:
        with _open_binary(path) as fh:
            events = ElementTree.iterparse(fh, events=("start", "end"))
            root = None
            article = 0
            for event, element in events:
                if root is None and event == "start":
                    root = element
                if event != "end" or element.tag != "PubmedArticle":
                    continue
                article += 1
                citation = element.find("MedlineCitation")
                pmid = _element_text(citation.find("PMID")) if citation is not None else ""
                title = _element_text(element.find(".//Article/ArticleTitle"))
                parts = [_element_text(a) for a in element.findall(".//Article/Abstract/AbstractText")]
                text = "\n".join(p for p in [title, *parts] if p)
                root.clear()  # drop finished articles: memory stays flat over a 30k-article file
                if text:
                    yield pmid or f"{path.name}#{article}", text
    except ElementTree.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        raise CorpusError(f"{path}:{line}: malformed XML ({reason}, column {column})") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise CorpusError(f"{path}: cannot read: {exc}") from None


def iter_file_documents(path: Path, fmt: str, doc_id: str | None = None,
                        fields: TableFields = TableFields()) -> Iterator[tuple[str, str]]:
    """The documents of one corpus file of a known format (`fields`: columns of Parquet/CSV/TSV)."""
    if fmt == "txt":
        return read_txt(path, doc_id if doc_id is not None else path.stem)
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "pubmed-xml":
        return read_pubmed_xml(path)
    if fmt == "parquet":
        return read_parquet(path, fields)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, fields, "," if fmt == "csv" else "\t")
    raise CorpusError(f"unknown corpus format {fmt!r} (known: {', '.join(FORMATS)})")


def iter_documents(path: str | Path, fmt: Format = "auto", *, fields: TableFields = TableFields(),
                   on_file_done: Callable[[Path], None] | None = None) -> Iterator[tuple[str, str]]:
    """Yield (doc_id, text) for every non-empty document of the corpus at `path`, streaming.

    `on_file_done(file)` is called after each corpus file is read (progress bars measure bytes).

    Raises CorpusError for a missing path, a corpus without documents, undecodable bytes,
    malformed JSONL lines, XML, Parquet and CSV/TSV, each naming the file (and line or row).
    """
    root = Path(path)
    files = corpus_files(root, fmt)
    count = 0
    for file, file_fmt in files:
        doc_id = file.relative_to(root).with_suffix("").as_posix() if root.is_dir() else file.stem
        for doc in iter_file_documents(file, file_fmt, doc_id, fields):
            count += 1
            yield doc
        if on_file_done is not None:
            on_file_done(file)
    if count == 0:
        raise CorpusError(f"corpus is empty: no non-blank documents in {root}")
