"""HF folders: export loads in transformers with the same logits; import of MLM and BertModel folders."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from engine.bert import BertForMaskedLM, HFFolderError, load_hf_folder, preset, save_hf_folder
from engine.bert import hf_io
from tests.conftest import teacher_dir

VOCAB = 1000


def _model(seed=0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(preset("tiny", vocab_size=VOCAB)).eval()


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


def test_exported_folder_loads_in_transformers_with_the_same_logits(tmp_path):
    model = _model()
    out = save_hf_folder(model, tmp_path / "export")
    hf, info = transformers.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ids, mask = _batch()
    with torch.no_grad():
        ours = model.logits(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert theirs.shape[-1] == VOCAB
    assert (ours[mask.bool()] - theirs[mask.bool()]).abs().max() < 1e-5


def test_export_slices_vocabulary_rows_and_leaves_out_tied_copies(tmp_path):
    out = save_hf_folder(_model(), tmp_path / "export")
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["bert.embeddings.word_embeddings.weight"].shape == (VOCAB, 64)
    assert tensors["cls.predictions.bias"].shape == (VOCAB,)
    assert "cls.predictions.decoder.weight" not in tensors
    assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB


def test_export_then_import_round_trips_every_weight(tmp_path):
    model = _model()
    out = save_hf_folder(model, tmp_path / "export")
    loaded, config = load_hf_folder(out)
    assert config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_export_copies_the_tokenizer_so_auto_tokenizer_loads_it(tmp_path):
    teacher = teacher_dir()
    out = save_hf_folder(_model(), tmp_path / "export", tokenizer_dir=teacher)
    text = "Aspirin reduced IL-6 levels."
    ours = transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"]
    assert ours == transformers.AutoTokenizer.from_pretrained(teacher)(text)["input_ids"]


def test_existing_non_empty_output_is_refused_and_kept(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(HFFolderError, match="already exists"):
        save_hf_folder(_model(), out)
    assert (out / "keep.txt").read_text() == "x"


def test_overwrite_never_replaces_a_folder_the_engine_did_not_write(tmp_path):
    out = tmp_path / "my_notes"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(HFFolderError, match="not written by this engine"):
        save_hf_folder(_model(), out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_overwrite_replaces_an_earlier_export(tmp_path):
    out = save_hf_folder(_model(), tmp_path / "export")
    (out / "stale.txt").write_text("x")
    save_hf_folder(_model(), out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_export_never_writes_over_its_own_tokenizer_folder(tmp_path, where):
    tokenizer = tmp_path / "shards"
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    out = {"same": tokenizer, "parent": tmp_path, "inside": tokenizer / "hf"}[where]
    with pytest.raises(HFFolderError, match="lies inside the tokenizer folder"):
        save_hf_folder(_model(), out, tokenizer_dir=tokenizer, overwrite=True)
    assert [p.name for p in tokenizer.iterdir()] == ["vocab.txt"]


def test_failed_export_leaves_no_output_and_no_temporary_folder(tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_hf_folder(_model(), tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_teacher_bertmodel_folder_loads_with_a_fresh_tied_head_and_matches_transformers():
    teacher = teacher_dir()
    model, config = load_hf_folder(teacher)
    assert (config.hidden_size, config.num_layers, config.vocab_size) == (384, 6, 30522)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    reference = transformers.AutoModel.from_pretrained(teacher).eval()
    model.eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 7592, 2088, 102, 0, 0, 0, 0]])
    mask = (ids > 0).long()
    with torch.no_grad():
        ours = model.encode(ids, attention_mask=mask)
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours[mask.bool()] - theirs[mask.bool()]).abs().max() < 1e-4


def test_folder_without_weights_is_a_named_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(transformers.BertConfig(vocab_size=100).to_dict()))
    with pytest.raises(HFFolderError, match="no weights found"):
        load_hf_folder(tmp_path)


def test_folder_without_config_is_a_named_error(tmp_path):
    with pytest.raises(HFFolderError, match="no config.json"):
        load_hf_folder(tmp_path)


def test_weights_that_disagree_with_config_name_the_tensor_and_shapes(tmp_path):
    out = save_hf_folder(_model(), tmp_path / "export")
    tensors = load_file(str(out / "model.safetensors"))
    tensors["bert.encoder.layer.1.intermediate.dense.weight"] = torch.zeros(100, 64)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(HFFolderError, match=r"bert.encoder.layer.1.intermediate.dense.weight has shape \(100, 64\), "
                                            r"the config implies \(128, 64\)"):
        load_hf_folder(out)


def test_missing_encoder_weights_are_named(tmp_path):
    out = save_hf_folder(_model(), tmp_path / "export")
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["bert.encoder.layer.0.output.dense.bias"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(HFFolderError, match="missing weights.*layer.0.output.dense.bias"):
        load_hf_folder(out)


def test_pytorch_bin_weights_load_with_weights_only(tmp_path):
    model = _model()
    out = save_hf_folder(model, tmp_path / "export")
    tensors = load_file(str(out / "model.safetensors"))
    (out / "model.safetensors").unlink()
    torch.save(tensors, out / "pytorch_model.bin")
    loaded, _ = load_hf_folder(out)
    assert torch.equal(loaded.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)


def test_pickled_code_in_a_bin_file_is_refused(tmp_path):
    out = save_hf_folder(_model(), tmp_path / "export")
    (out / "model.safetensors").unlink()
    torch.save({"weights": shutil.copy}, out / "pytorch_model.bin")  # a pickle that references a function
    with pytest.raises(HFFolderError, match="pytorch_model.bin: cannot be read as plain tensors"):
        load_hf_folder(out)
