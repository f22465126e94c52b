"""CoNLL-style NER files: one token per line with its tag in the last column, blank line between sentences.

Reading keeps everything needed to write the file back byte for byte (column separator, the middle
columns of multi-column files, the line number of every token for error messages), so that a
round trip is exact and errors can point at `file:line`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.io import atomic_write_text
from engine.ner.errors import NerError


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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise NerError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    sentences: list[Sentence] = []
    current = Sentence([], [], [], [])
    separator, num_columns = None, None
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            if current.words:
                sentences.append(current)
                current = Sentence([], [], [], [])
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
    return ConllFile(path, sentences, separator or "\t", num_columns or 2)


def format_conll(rows_per_sentence: list[list[tuple[str, ...]]], separator: str = "\t") -> str:
    """Token lines joined by `separator`, each sentence followed by one blank line (the shared layout)."""
    parts = []
    for rows in rows_per_sentence:
        parts.extend(separator.join(row) + "\n" for row in rows)
        parts.append("\n")
    return "".join(parts)


def write_conll(path: str | Path, data: ConllFile) -> Path:
    """Write `data` back in its own layout; `read_conll` → `write_conll` reproduces the shared files."""
    rows = [[(w, *m, t) for w, m, t in zip(s.words, s.middle or [()] * len(s.words), s.tags)]
            for s in data.sentences]
    return atomic_write_text(path, format_conll(rows, data.separator))


def write_predictions(path: str | Path, sentences: list[Sentence], predicted: list[list[str]]) -> Path:
    """Write `token<TAB>gold<TAB>pred` per token for error analysis (readable by `read_conll`)."""
    if len(sentences) != len(predicted):
        raise ValueError(f"{len(sentences)} sentences but {len(predicted)} predicted sequences")
    rows = []
    for sentence, tags in zip(sentences, predicted):
        if len(tags) != len(sentence.words):
            raise ValueError(f"sentence at line {sentence.lines[0]}: {len(sentence.words)} words, {len(tags)} predictions")
        rows.append(list(zip(sentence.words, sentence.tags, tags)))
    return atomic_write_text(path, format_conll(rows))
