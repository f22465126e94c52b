"""Tag schemes: accept typed IOB2, convert IOB1, reject anything else, and find `I-X` that starts an entity.

In IOB2 every entity starts with `B-X`. IOB1 starts entities with `I-X` and uses `B-X` only between two
adjacent entities of the same type. A file is taken as IOB1 when entities start with `I-` and no
`B-` ever starts an entity after `O` or another type; otherwise an `I-X` that starts an entity is an
error (strict) or is repaired to `B-X` with a warning (`repair=True`).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Literal

from engine.ner.conll import ConllFile
from engine.ner.errors import NerError

TAG = re.compile(r"^(O|[BI]-\S+)$")
Scheme = Literal["auto", "iob2", "iob1"]


@dataclass
class SchemeReport:
    """What `normalise_tags` found and changed in one file."""

    scheme: str  # "iob2" or "iob1" (as found, before conversion)
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
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            out.append("B-" + tag[2:])
        else:
            out.append(tag)
        prev = tag
    return out


def check_tag_names(data: ConllFile) -> None:
    """Reject tags outside typed IOB (`O`, `B-X`, `I-X`), e.g. IOBES `S-X`, BILOU `U-X`, bare `X`."""
    for sentence in data.sentences:
        for tag, line in zip(sentence.tags, sentence.lines):
            if not TAG.match(tag):
                raise NerError(f"{data.path}:{line}: tag {tag!r} is not typed IOB (O, B-TYPE, I-TYPE); "
                               "IOBES/BILOU and untyped tags are not supported")


def detect_scheme(data: ConllFile) -> str:
    """"iob1" when entities start with `I-` and never with `B-` after `O`/another type, else "iob2"."""
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


def normalise_tags(data: ConllFile, scheme: Scheme = "auto", repair: bool = False) -> SchemeReport:
    """Check tags, convert IOB1 → IOB2 in place, and fail (or repair) on `I-X` starting an entity."""
    check_tag_names(data)
    found = detect_scheme(data) if scheme == "auto" else scheme
    if found == "iob1":
        for sentence in data.sentences:
            sentence.tags = iob1_to_iob2(sentence.tags)
        return SchemeReport("iob1", 0)
    repaired = 0
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
    return SchemeReport("iob2", repaired)


def count_entities(tags_per_sentence: list[list[str]]) -> int:
    """Entities in IOB2 sequences (one per `B-` tag)."""
    return sum(tag.startswith("B-") for tags in tags_per_sentence for tag in tags)
