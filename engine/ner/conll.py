"""CoNLL-style NER files: one token per line with its tag in the last column, blank line between sentences.

Reading keeps everything needed to write the file back byte for byte (column separator, line
ending, the middle columns of multi-column files, `-DOCSTART-` document separators, the tag dialect
once `engine.ner.iob` has read it, the line number of every token for error messages), so that a
round trip is exact and errors can point at `file:line`. A `-DOCSTART-` line (CoNLL-2003 style)
separates documents: it is no token, and is written back, followed by its blank line, before the
sentence it preceded, in data and prediction files alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.io import atomic_write_text
from engine.ner.errors import NerError
from engine.ner.schemes import Dialect, to_dialect

DOCSTART = "-DOCSTART-"


@dataclass
class Sentence:
    """One sentence: words, their tags, any middle columns, and the file line of each token."""

    words: list[str]  # the first column of each token line
    tags: list[str]  # the last column of each token line
    middle: list[tuple[str, ...]] = field(default_factory=list)  # columns between word and tag (often empty tuples)
    lines: list[int] = field(default_factory=list)  # 1-based line number of each token in its file


@dataclass
class ConllFile:
    """A parsed file: its sentences plus what a writer needs to reproduce it."""

    path: Path  # where it was read from (used in error messages)
    sentences: list[Sentence]  # in file order
    separator: str = "\t"  # column separator found in the file ("\t" or " ")
    num_columns: int = 2  # columns per token line, tag last
    newline: str = "\n"  # line ending of the file ("\r\n" when its first line ends so)
    docstarts: dict[int, str] = field(default_factory=dict)  # sentence index → the -DOCSTART- line before it
    dialect: Dialect = field(default_factory=Dialect)  # tag scheme of the file (set by engine.ner.iob)


def _split(line: str) -> tuple[list[str], str]:
    """Split a token line on tabs when it has any, else on runs of whitespace."""
    if "\t" in line:
        return line.split("\t"), "\t"
    return line.split(), " "


def read_conll(path: str | Path) -> ConllFile:
    """Parse `path`; raise NerError naming file and line for an empty file or a ragged column count."""
    path = Path(path)
    if not path.is_file():
        raise NerError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text: universal newlines would drop the \r
    except UnicodeDecodeError as exc:
        raise NerError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    sentences: list[Sentence] = []
    docstarts: dict[int, str] = {}
    current = Sentence([], [], [], [])
    separator, num_columns = None, None
    newline = "\r\n" if text.split("\n", 1)[0].endswith("\r") else "\n"
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        is_docstart = line.startswith(DOCSTART) and line[len(DOCSTART):len(DOCSTART) + 1] in ("", " ", "\t")
        if not line.strip() or is_docstart:
            if current.words:
                sentences.append(current)
                current = Sentence([], [], [], [])
            if is_docstart:  # two in a row (an empty document) stay together, blank line between
                before = docstarts.get(len(sentences))
                docstarts[len(sentences)] = line if before is None else before + newline + newline + line
            continue
        columns, sep = _split(line)
        if len(columns) < 2:
            raise NerError(f"{path}:{number}: expected 'token<TAB>tag', found {len(columns)} column: {line!r}")
        if num_columns is None:
            separator, num_columns = sep, len(columns)
        elif len(columns) != num_columns:
            raise NerError(f"{path}:{number}: expected {num_columns} columns like line 1 of the data, "
                           f"found {len(columns)}: {line!r}")
        current.words.append(columns[0])
        current.tags.append(columns[-1])
        current.middle.append(tuple(columns[1:-1]))
        current.lines.append(number)
    if current.words:
        sentences.append(current)
    if not sentences:
        raise NerError(f"{path}: empty file (no token lines)")
    return ConllFile(path, sentences, separator or "\t", num_columns or 2, newline, docstarts)


def format_conll(rows_per_sentence: list[list[tuple[str, ...]]], separator: str = "\t", newline: str = "\n",
                 docstarts: dict[int, str] | None = None) -> str:
    """Token lines joined by `separator`, each sentence (and -DOCSTART- line) followed by one blank line."""
    docstarts = docstarts or {}
    parts = []
    for index, rows in enumerate(rows_per_sentence):
        if index in docstarts:
            parts.append(docstarts[index] + newline + newline)
        parts.extend(separator.join(row) + newline for row in rows)
        parts.append(newline)
    if len(rows_per_sentence) in docstarts:  # a document marker after the last sentence
        parts.append(docstarts[len(rows_per_sentence)] + newline + newline)
    return "".join(parts)


def write_conll(path: str | Path, data: ConllFile) -> Path:
    """Write `data` back in its own layout and tag dialect; `read_conll` → IOB2 → `write_conll` is exact."""
    rows = [[(w, *m, t) for w, m, t in zip(s.words, s.middle or [()] * len(s.words), to_dialect(s.tags, data.dialect))]
            for s in data.sentences]
    return atomic_write_text(path, format_conll(rows, data.separator, data.newline, data.docstarts))


def write_predictions(path: str | Path, data: ConllFile, predicted: list[list[str]]) -> Path:
    """Write `token<TAB>gold<TAB>pred` per token for error analysis (readable by `read_conll`).

    `predicted` is IOB2; both tag columns are written in the dialect of `data`, with its line ending
    and -DOCSTART- lines, so the file reads like the user's own.
    """
    sentences = data.sentences
    if len(sentences) != len(predicted):
        raise ValueError(f"{len(sentences)} sentences but {len(predicted)} predicted sequences")
    rows = []
    for sentence, tags in zip(sentences, predicted):
        if len(tags) != len(sentence.words):
            raise ValueError(f"sentence at line {sentence.lines[0]}: {len(sentence.words)} words, {len(tags)} predictions")
        rows.append(list(zip(sentence.words, to_dialect(sentence.tags, data.dialect), to_dialect(tags, data.dialect))))
    return atomic_write_text(path, format_conll(rows, "\t", data.newline, data.docstarts))
