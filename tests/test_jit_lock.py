"""A build lock left in the torch extensions cache by a killed build is removed with one line; a
lock of a live build is waited on, then named in an error, never waited on forever. Every test
uses its own cache folder (the real one is shared)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.training.jit_lock import JitLockError, build_locks, clear_stale_locks, is_stale


def make_build_folder(root, age_s: float):
    """`<root>/py311_cpu/deepspeed_shm_comm/` with a lock and build files last touched `age_s` ago."""
    folder = root / "py311_cpu" / "deepspeed_shm_comm"
    folder.mkdir(parents=True)
    for name in ("build.ninja", "shm.o", "lock"):
        (folder / name).write_text("")
        stamp = time.time() - age_s
        os.utime(folder / name, (stamp, stamp))
    return folder / "lock"


def test_lock_left_by_a_killed_build_is_removed_with_one_line(tmp_path):
    lock = make_build_folder(tmp_path, age_s=600)
    lines = []
    assert build_locks(tmp_path) == [lock]
    assert clear_stale_locks(tmp_path, grace_s=60, say=lines.append) == [lock]
    assert not lock.exists() and (lock.parent / "shm.o").exists()
    assert len(lines) == 1 and str(lock) in lines[0]


def test_locks_are_found_in_both_cache_layouts(tmp_path, monkeypatch):
    from engine.training.jit_lock import extensions_root

    default_layout = make_build_folder(tmp_path / "default", age_s=600)
    env_layout = tmp_path / "env" / "cpu_adam" / "lock"
    env_layout.parent.mkdir(parents=True)
    env_layout.write_text("")
    assert build_locks(tmp_path / "default") == [default_layout]
    assert build_locks(tmp_path / "env") == [env_layout]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "env"))
    assert extensions_root() == tmp_path / "env"


def test_a_fresh_lock_is_a_live_build_and_is_kept(tmp_path):
    lock = make_build_folder(tmp_path, age_s=5)
    assert not is_stale(lock, grace_s=60)


def test_an_old_lock_with_a_process_working_in_its_folder_is_a_live_build(tmp_path):
    lock = make_build_folder(tmp_path, age_s=600)
    builder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=lock.parent)
    try:
        time.sleep(0.2)
        assert not is_stale(lock, grace_s=60)
        with pytest.raises(JitLockError, match=r"lock: DeepSpeed's op build lock is still held after 1 s; "
                                               r"if no build is running, remove that file"):
            clear_stale_locks(tmp_path, grace_s=60, timeout_s=1, poll_s=0.2, say=lambda line: None)
        assert lock.exists()
    finally:
        builder.kill()
        builder.wait()


def test_a_lock_released_while_waiting_ends_the_wait(tmp_path):
    lock = make_build_folder(tmp_path, age_s=1)
    remover = subprocess.Popen([sys.executable, "-c", f"import time, os; time.sleep(0.5); os.unlink({str(lock)!r})"])
    assert clear_stale_locks(tmp_path, grace_s=60, timeout_s=30, poll_s=0.1, say=lambda line: None) == []
    remover.wait()
    assert not lock.exists()
