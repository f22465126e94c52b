"""Stale build locks in the torch extensions cache: found and removed, never waited on forever.

DeepSpeed JIT-builds its ops (the CPU accelerator's shared-memory collective, CPU Adam) through
`torch.utils.cpp_extension.load`, which takes `<cache>/<python+cuda>/<op>/lock` by creating the
file and deletes it when the build ends. A process killed mid-build leaves the file behind, and
every later process then waits in `FileBaton.wait()` forever, printing nothing. The lock holds no
pid, so a lock counts as stale when nothing shows a live builder: it and every file beside it are
older than `grace_s`, and no process works in that folder (ninja and the compiler run there).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

LOCK_NAME = "lock"


class JitLockError(RuntimeError):
    """A build lock still held by a live build after the timeout."""


def extensions_root() -> Path:
    """Where torch builds JIT extensions: $TORCH_EXTENSIONS_DIR, else its per-user default."""
    from torch.utils.cpp_extension import get_default_build_root
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def build_locks(root: Path) -> list[Path]:
    """Lock files of op build folders under `root`: `<root>/<op>/lock` with $TORCH_EXTENSIONS_DIR,
    `<root>/<python+cuda>/<op>/lock` under torch's default root."""
    if not root.is_dir():
        return []
    return sorted(p for pattern in (f"*/{LOCK_NAME}", f"*/*/{LOCK_NAME}") for p in root.glob(pattern) if p.is_file())


def _processes_working_in(folder: Path) -> bool:
    target = str(folder.resolve())
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "cwd") == target:
                return True
        except OSError:
            continue
    return False


def _newest_change(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.iterdir() if p.exists()), default=0.0)


def is_stale(lock: Path, grace_s: float, now: float | None = None) -> bool:
    """True when no live builder shows: nothing in the build folder changed for `grace_s` seconds
    and no process has the folder as its working directory."""
    now = time.time() if now is None else now
    folder = lock.parent
    try:
        recent = now - _newest_change(folder) < grace_s
    except OSError:
        return False
    return not recent and not _processes_working_in(folder)


def clear_stale_locks(root: Path | None = None, grace_s: float = 120.0, timeout_s: float = 1800.0,
                      poll_s: float = 2.0, say=print) -> list[Path]:
    """Remove stale build locks under `root` (one line each), wait for live ones to be released;
    returns the removed locks. A lock still held by a live build after `timeout_s` raises
    `JitLockError` naming the file to remove."""
    root = extensions_root() if root is None else Path(root)
    removed = []
    started = time.monotonic()
    for lock in build_locks(root):
        while lock.exists():
            if is_stale(lock, grace_s):
                lock.unlink(missing_ok=True)
                removed.append(lock)
                say(f"note: removed a stale JIT build lock {lock} (left by a process killed mid-build; "
                    f"nothing has built there for {grace_s:.0f} s)")
                break
            if time.monotonic() - started > timeout_s:
                raise JitLockError(f"{lock}: DeepSpeed's op build lock is still held after {timeout_s:.0f} s; "
                                   f"if no build is running, remove that file and start again")
            time.sleep(poll_s)
    return removed
