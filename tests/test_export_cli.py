"""`engine/export_hf.py` refuses what is not a complete checkpoint, with one line and no output."""
import pytest

from engine.export_hf import main
from engine.training.checkpoints import tag_for


def test_folder_without_a_complete_checkpoint_is_refused(tmp_path):
    half = tmp_path / "checkpoints" / tag_for(10)
    half.mkdir(parents=True)
    (half / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    out = tmp_path / "hf"
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "checkpoints"), str(out)])
    assert str(exc.value.code).startswith("error: no complete checkpoint at")
    assert not out.exists()


def test_missing_checkpoint_path_is_named(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "nope"), str(tmp_path / "hf")])
    assert "nope" in str(exc.value.code)
