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


# -- data-loss guards and damaged checkpoints --------------------------------------------------
def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def stage0_run(tmp_path):
    """A run folder as pretrain leaves it: a stage-0 checkpoint tag (tiny model) and its shard folder."""
    import dataclasses
    import json

    import torch

    from engine.bert.config import preset
    from engine.bert.modeling import BertForMaskedLM
    from engine.training.checkpoints import RUN_STATE, write_marker

    config = preset("tiny", vocab_size=8)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\nc\n")
    run = tmp_path / "run"
    tag = run / "checkpoints" / tag_for(4)
    tag.mkdir(parents=True)
    torch.save({"module": BertForMaskedLM(config).state_dict()}, tag / "mp_rank_00_model_states.pt")
    (tag / RUN_STATE).write_text(json.dumps({"step": 4, "model": dataclasses.asdict(config),
                                             "config": {"data": {"shards": str(shards)}}}))
    write_marker(tag, 4)
    return run, shards


def _refused(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    message = str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_export_of_an_intact_checkpoint_marks_its_folder(stage0_run, tmp_path):
    import json

    from engine.outputs import OWNER_FILE
    from engine.shards.vocab import vocabulary_sha256

    run, _ = stage0_run
    assert main([str(run / "checkpoints"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / OWNER_FILE).is_file()
    recorded = json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_sha256"]
    assert recorded == vocabulary_sha256(tmp_path / "hf") == vocabulary_sha256(stage0_run[1])


@pytest.mark.parametrize("out", ["run", "checkpoints", "tag", "shards"])
def test_overwrite_never_deletes_the_export_inputs(stage0_run, out):
    run, shards = stage0_run
    target = {"run": run, "checkpoints": run / "checkpoints", "tag": run / "checkpoints" / tag_for(4),
              "shards": shards}[out]
    before = _snapshot(run.parent)
    message = _refused([str(run / "checkpoints"), str(target), "--overwrite", "--tokenizer", str(shards)])
    assert "choose an OUT outside it" in message and str(target) in message
    assert _snapshot(run.parent) == before


def test_overwrite_never_replaces_a_user_folder(stage0_run, tmp_path):
    run, _ = stage0_run
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    message = _refused([str(run / "checkpoints"), str(mine), "--overwrite"])
    assert "not written by this engine" in message
    assert (mine / "chapter1.tex").read_text() == "years of work"


def test_a_flipped_byte_in_the_weights_is_refused_naming_the_file(stage0_run, tmp_path):
    run, _ = stage0_run
    weights = run / "checkpoints" / tag_for(4) / "mp_rank_00_model_states.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x40
    weights.write_bytes(bytes(data))
    message = _refused([str(run / "checkpoints" / tag_for(4)), str(tmp_path / "hf")])
    assert "mp_rank_00_model_states.pt: sha256 differs" in message
    assert not (tmp_path / "hf").exists()


def _record_vocabulary(run, shards):
    import json

    from engine.shards.vocab import vocabulary_sha256
    from engine.training.checkpoints import RUN_STATE, write_marker

    tag = run / "checkpoints" / tag_for(4)
    state = json.loads((tag / RUN_STATE).read_text())
    (tag / RUN_STATE).write_text(json.dumps({**state, "vocab_sha256": vocabulary_sha256(shards)}))
    write_marker(tag, 4)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded-in-checkpoint", "from-run-shards"])
def test_export_refuses_a_tokenizer_other_than_the_runs_of_the_same_size(stage0_run, tmp_path, recorded):
    run, shards = stage0_run
    if recorded:
        _record_vocabulary(run, shards)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    (shuffled / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nb\na\nc\n")
    message = _refused([str(run / "checkpoints"), str(tmp_path / "hf"), "--tokenizer", str(shuffled)])
    assert str(shuffled) in message and ("not the vocabulary" in message or "different vocabularies" in message)
    assert not (tmp_path / "hf").exists()
    same = tmp_path / "copy"
    same.mkdir()
    (same / "vocab.txt").write_bytes((shards / "vocab.txt").read_bytes())
    assert main([str(run / "checkpoints"), str(tmp_path / "hf"), "--tokenizer", str(same)]) == 0
