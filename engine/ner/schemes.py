"""Tag dialects as distributed in the field, and their exact conversion to and from IOB2.

The engine scores in IOB2 (`B-X` starts an entity, `I-X` continues it). Files arrive as:
- IOB1: an entity starts with `I-X`; `B-X` only between two adjacent entities of the same type;
- IOBES (also called BIOES): `S-X` a one-token entity, `E-X` the last token of a longer one;
- BILOU: the same with `U-X` (unit) and `L-X` (last);
- untyped: bare `B` / `I` / `O` (BioBERT's BC2GM, JNLPBA, linnaeus, s800 ...) in any of the above;
  the entity type comes from the caller (`--entity-type`, default the task folder's name).

`to_iob2` and `from_iob2` are inverses on well-formed sequences, so a file read, converted to IOB2
and written back is the original. `from_iob2` also accepts what a model predicts (an `I-X` after `O`),
writing it as the start of an entity, so that every prediction can be written in the file's dialect.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEMES = ("iob2", "iob1", "iobes", "bilou")
SCHEME_ALIASES = {"bioes": "iobes"}
_LAST = {"iobes": "E", "bilou": "L"}  # prefix of the last token of a multi-token entity
_SINGLE = {"iobes": "S", "bilou": "U"}  # prefix of a one-token entity
PREFIXES = {"iob2": "BI", "iob1": "BI", "iobes": "BIES", "bilou": "BILU"}


@dataclass(frozen=True)
class Dialect:
    """How a file writes its tags: the scheme, and the type given to untyped tags (None: typed file)."""

    scheme: str = "iob2"  # one of SCHEMES
    entity_type: str | None = None  # set when the file's tags are bare `B`/`I`/`O`: the type they stand for

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown tag scheme {self.scheme!r} (known: {', '.join(SCHEMES)})")

    def describe(self) -> str:
        return self.scheme + (f" untyped (type {self.entity_type})" if self.entity_type else "")


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "Gene") for `B-Gene`; ("O", "") for `O`; ("B", "") for a bare `B`."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def _continues(prev: str, tag: str) -> bool:
    """True when IOB2 `tag` is an `I-X` continuing an entity of type X opened by `prev`."""
    return tag.startswith("I-") and prev != "O" and prev[2:] == tag[2:]


def to_iob2(tags: list[str], scheme: str) -> list[str]:
    """Typed tags of `scheme` as IOB2 (checked input: see `engine.ner.iob`)."""
    if scheme == "iob2":
        return list(tags)
    out, prev = [], "O"
    for tag in tags:
        prefix, kind = split_tag(tag)
        if scheme == "iob1":
            starts = prefix == "I" and (prev == "O" or split_tag(prev)[1] != kind)
            out.append(f"B-{kind}" if starts else tag)
        elif prefix in (_SINGLE[scheme], "B"):
            out.append(f"B-{kind}")
        elif prefix in (_LAST[scheme], "I"):
            out.append(f"I-{kind}")
        else:
            out.append(tag)
        prev = tag
    return out


def from_iob2(tags: list[str], scheme: str) -> list[str]:
    """IOB2 tags (gold or predicted) written in `scheme`; an `I-X` that opens an entity counts as its start."""
    if scheme == "iob2":
        return list(tags)
    out = []
    for i, tag in enumerate(tags):
        if tag == "O":
            out.append(tag)
            continue
        prev = tags[i - 1] if i else "O"
        nxt = tags[i + 1] if i + 1 < len(tags) else "O"
        kind = tag[2:]
        starts = tag.startswith("B-") or not _continues(prev, tag)
        if scheme == "iob1":
            # B- survives only where an entity directly follows another of the same type.
            out.append(f"B-{kind}" if starts and prev != "O" and prev[2:] == kind else f"I-{kind}")
            continue
        ends = not _continues(tag, nxt)
        if starts and ends:
            out.append(f"{_SINGLE[scheme]}-{kind}")
        elif starts:
            out.append(f"B-{kind}")
        elif ends:
            out.append(f"{_LAST[scheme]}-{kind}")
        else:
            out.append(f"I-{kind}")
    return out


def add_type(tags: list[str], entity_type: str) -> list[str]:
    """Bare `B`/`I`/... tags given the type `entity_type` (`O` stays)."""
    return [tag if tag == "O" else f"{tag}-{entity_type}" for tag in tags]


def strip_type(tags: list[str]) -> list[str]:
    """Typed tags back to bare prefixes (`B-Gene` → `B`)."""
    return [tag if tag == "O" else tag.split("-", 1)[0] for tag in tags]


def to_dialect(iob2_tags: list[str], dialect: Dialect) -> list[str]:
    """IOB2 tags as the file of `dialect` writes them (scheme, and bare when the file was untyped)."""
    tags = from_iob2(iob2_tags, dialect.scheme)
    return strip_type(tags) if dialect.entity_type else tags
