"""Which folders the engine may replace: only ones it wrote itself, never one holding its inputs.

Every command that writes a folder (export, distillation init, NER results) drops `OWNER_FILE`
into it. `--overwrite` replaces a folder only when that file is there, so a typo in OUT cannot
delete a user's folder, and never when OUT is, holds or lies inside one of the command's inputs
(the checkpoint being exported, the tokenizer folder it copies from). Shard folders carry their
`manifest.json` for the same purpose.
"""
from __future__ import annotations

import json
from pathlib import Path

OWNER_FILE = ".bioptimus-engine"


class OutputFolderError(ValueError):
    """An output folder the command must not write or replace; the message names it."""


def mark_owned(folder: Path, kind: str) -> None:
    """Declare `folder` (being built, before its swap into place) an output of the engine."""
    (Path(folder) / OWNER_FILE).write_text(json.dumps({"written_by": "bioptimus-engine", "kind": kind}) + "\n",
                                           encoding="utf-8")


def owned_kind(folder: Path) -> str | None:
    """The kind recorded by `mark_owned`, or None for a folder the engine did not write."""
    try:
        return json.loads((Path(folder) / OWNER_FILE).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _overlap(out: Path, other: Path) -> bool:
    out, other = out.resolve(), other.resolve()
    return out == other or out in other.parents or other in out.parents


def check_replaceable(out: Path, kind: str, overwrite: bool, inputs: dict[str, Path] | None = None) -> None:
    """Raise unless writing the folder `out` can lose nothing: it is absent or empty, or it is an
    engine output of the same `kind` and `overwrite` is set; and it overlaps none of `inputs`
    (named by their option, e.g. {"checkpoint": ..., "--tokenizer": ...})."""
    out = Path(out)
    for name, path in (inputs or {}).items():
        if path is not None and _overlap(out, Path(path)):
            raise OutputFolderError(f"{out}: is, holds or lies inside the {name} {path} this command reads; "
                                    f"choose an OUT outside it")
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputFolderError(f"{out}: already exists and is not empty (pass --overwrite to replace an "
                                f"earlier output)")
    found = owned_kind(out)
    if found is None:
        raise OutputFolderError(f"{out}: not written by this engine (no {OWNER_FILE}); refusing to replace it "
                                f"even with --overwrite, remove it yourself or choose another OUT")
    if found != kind:
        raise OutputFolderError(f"{out}: holds an engine output of another kind ({found}, not {kind}); "
                                f"refusing to replace it")
