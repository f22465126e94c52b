"""Tag schemes of an NER file: detect the dialect, check it, convert to IOB2 in place for training and scoring.

Detection (`scheme="auto"`): `S-`/`E-` tags mean IOBES (BIOES), `U-`/`L-` tags mean BILOU; otherwise a
file whose entities start with `I-` and never with `B-` after `O`/another type is IOB1, else IOB2.
Bare `B`/`I`/`O` tags (no type) are given `entity_type`. The file remembers its dialect, so
`write_conll` writes it back byte for byte and prediction files come out in the user's own dialect.

In IOB2 an `I-X` that starts an entity is an error (strict) or is repaired to `B-X` with a warning
(`repair=True`); IOBES and BILOU sequences must be well formed (every entity opened and closed).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Literal

from engine.ner.conll import ConllFile
from engine.ner.errors import NerError
from engine.ner.schemes import PREFIXES, SCHEME_ALIASES, Dialect, add_type, split_tag, to_iob2

TAG = re.compile(r"^(O|[BIESLU](-\S+)?)$")
Scheme = Literal["auto", "iob2", "iob1", "iobes", "bioes", "bilou"]


@dataclass
class SchemeReport:
    """What `normalise_tags` found and changed in one file."""

    scheme: str  # the file's dialect as found, e.g. "iobes" or "iob2 untyped (type Gene)"
    repaired: int  # number of `I-X` tags turned into `B-X` by repair (IOB2 input only)


def bad_i_starts(tags: list[str]) -> list[int]:
    """Positions where `I-X` follows `O`, the sentence start, or another type (invalid in IOB2)."""
    bad, prev = [], "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            bad.append(i)
        prev = tag
    return bad


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """Rewrite IOB1 tags as IOB2: an `I-X` that starts an entity becomes `B-X`."""
    return to_iob2(tags, "iob1")


def _tag_lines(data: ConllFile):
    for sentence in data.sentences:
        yield from zip(sentence.tags, sentence.lines)


def check_tag_names(data: ConllFile) -> bool:
    """Reject tags of no known scheme and files mixing typed and bare tags; True when the file is untyped."""
    typed_at = untyped_at = None
    for tag, line in _tag_lines(data):
        if not TAG.match(tag):
            raise NerError(f"{data.path}:{line}: tag {tag!r} is not in a known scheme (O plus B-/I- IOB, "
                           "IOBES/BIOES S-/E-, BILOU U-/L-, typed like B-Gene or bare like B)")
        if tag == "O":
            continue
        if "-" in tag:
            typed_at = typed_at or line
        else:
            untyped_at = untyped_at or line
        if typed_at and untyped_at:
            raise NerError(f"{data.path}:{max(typed_at, untyped_at)}: tag {tag!r} mixes typed tags (line {typed_at}) "
                           f"with bare ones (line {untyped_at})")
    return untyped_at is not None


def _detect(data: ConllFile) -> str:
    """The scheme the tags of a checked, typed file are written in."""
    first: dict[str, int] = {}
    for tag, line in _tag_lines(data):
        first.setdefault(split_tag(tag)[0], line)
    iobes, bilou = {"E", "S"} & set(first), {"L", "U"} & set(first)
    if iobes and bilou:
        a, b = min(iobes, key=first.get), min(bilou, key=first.get)
        raise NerError(f"{data.path}:{max(first[a], first[b])}: mixes IOBES {a}- (line {first[a]}) "
                       f"with BILOU {b}- (line {first[b]}) tags")
    if iobes:
        return "iobes"
    if bilou:
        return "bilou"
    i_starts = b_starts = 0
    for sentence in data.sentences:
        prev = "O"
        for tag in sentence.tags:
            if tag != "O" and (prev == "O" or prev[2:] != tag[2:]):
                if tag.startswith("I-"):
                    i_starts += 1
                else:
                    b_starts += 1
            prev = tag
    return "iob1" if i_starts and not b_starts else "iob2"


def detect_scheme(data: ConllFile) -> str:
    """The scheme of `data` ("iob2", "iob1", "iobes", "bilou"); bare tags are judged by their prefixes."""
    check_tag_names(data)
    return _detect(data)


def _check_prefixes(data: ConllFile, scheme: str) -> None:
    for tag, line in _tag_lines(data):
        prefix = split_tag(tag)[0]
        if prefix != "O" and prefix not in PREFIXES[scheme]:
            raise NerError(f"{data.path}:{line}: tag {tag!r} is not {scheme.upper()} "
                           f"(prefixes {', '.join(PREFIXES[scheme])}); check --scheme")


def _check_closed(data: ConllFile, scheme: str) -> None:
    """IOBES/BILOU: `B`/`I` must be followed by `I`/last of the same type, which must follow `B`/`I`."""
    last = "E" if scheme == "iobes" else "L"
    for sentence in data.sentences:
        open_kind = None
        for tag, line in zip(sentence.tags, sentence.lines):
            prefix, kind = split_tag(tag)
            inside = prefix in ("I", last)
            if open_kind is not None and not (inside and kind == open_kind):
                raise NerError(f"{data.path}:{line}: {tag} after an unclosed {open_kind} entity "
                               f"(invalid {scheme.upper()}: expected I-{open_kind} or {last}-{open_kind})")
            if open_kind is None and inside:
                raise NerError(f"{data.path}:{line}: {tag} does not continue an entity (invalid {scheme.upper()})")
            open_kind = kind if prefix in ("B", "I") else None
        if open_kind is not None:
            raise NerError(f"{data.path}:{sentence.lines[-1]}: sentence ends inside a {open_kind} entity "
                           f"(invalid {scheme.upper()}: the last token needs {last}-)")


def normalise_tags(data: ConllFile, scheme: Scheme = "auto", repair: bool = False,
                   entity_type: str = "ENTITY") -> SchemeReport:
    """Check tags, convert them to typed IOB2 in place, record the file's dialect on `data`."""
    untyped = check_tag_names(data)
    if untyped:
        if not entity_type or any(c.isspace() for c in entity_type):
            raise NerError(f"{data.path}: entity type {entity_type!r} for the bare tags must be one word")
        for sentence in data.sentences:
            sentence.tags = add_type(sentence.tags, entity_type)
    found = _detect(data) if scheme == "auto" else SCHEME_ALIASES.get(scheme, scheme)
    _check_prefixes(data, found)
    if found in ("iobes", "bilou"):
        _check_closed(data, found)
    data.dialect = Dialect(found, entity_type if untyped else None)
    repaired = 0
    if found == "iob2":
        for sentence in data.sentences:
            bad = bad_i_starts(sentence.tags)
            if bad and not repair:
                i = bad[0]
                prev = sentence.tags[i - 1] if i else "sentence start"
                raise NerError(f"{data.path}:{sentence.lines[i]}: {sentence.tags[i]} follows {prev} "
                               "(invalid IOB2; pass --repair-iob to turn it into B-)")
            if bad:
                sentence.tags = iob1_to_iob2(sentence.tags)
                repaired += len(bad)
        if repaired:
            warnings.warn(f"{data.path}: repaired {repaired} I- tags that started an entity into B-", stacklevel=2)
    else:
        for sentence in data.sentences:
            sentence.tags = to_iob2(sentence.tags, found)
    return SchemeReport(data.dialect.describe(), repaired)


def count_entities(tags_per_sentence: list[list[str]]) -> int:
    """Entities in IOB2 sequences (one per `B-` tag)."""
    return sum(tag.startswith("B-") for tags in tags_per_sentence for tag in tags)
