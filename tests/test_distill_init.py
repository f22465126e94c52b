"""Distillation init end to end on a tiny teacher built here: rows, methods, determinism, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.distill.pipeline import DistillConfig, run
from engine.distill_init import main

OLD = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "drug", "caused", "was", "given", "in", "patients",
       ".", ",", "nephro", "##tox", "##icity", "cis", "##plat", "##in", "kidney", "damage", "##s", "old", "carbo"]
# New vocabulary: specials at other ids ([CLS]=1 here, 2 in the teacher), shared words, new tokens.
NEW = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "the", "a", "drug", "caused", "was", "given", "in", "patients",
       ".", ",", "kidney", "damage", "##s", "carbo", "nephrotoxicity", "cisplatin", "##platin", "β", "zzz"]
SENTENCE_1 = "cisplatin caused kidney damage."
SENTENCE_2 = "the drug cisplatin was given in patients."
# One context per (token, document): the two cisplatin sentences sit in different documents.
CORPUS = [f"{SENTENCE_1} nephrotoxicity was given.", SENTENCE_2, "the old drug. carboplatin was given."]


def _write_teacher(folder: Path, with_head: bool, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(OLD), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    model = BertForMaskedLM(config) if with_head else BertModel(config)
    if with_head:
        with torch.no_grad():
            model.cls.predictions.bias.copy_(torch.randn(len(OLD)))
            model.cls.predictions.transform.dense.weight.mul_(3.0)
    model.save_pretrained(str(folder))
    BertTokenizer(vocab={t: i for i, t in enumerate(OLD)}, do_lower_case=True).save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(OLD) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = _write_teacher(root / "teacher", with_head=False)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(NEW) + "\n", encoding="utf-8")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(CORPUS):
        (corpus / f"doc{i}.txt").write_text(text, encoding="utf-8")
    return root, teacher, vocab, corpus


def _run(inputs, name, method, **kwargs):
    root, teacher, vocab, corpus = inputs
    out = root / name
    config = DistillConfig(teacher=str(teacher), vocab=str(vocab), corpus=str(corpus), out=str(out),
                           method=method, device="cpu", probes=["cisplatin"], **kwargs)
    report = run(config, log=lambda *_: None)
    return out, report, load_file(str(out / "model.safetensors"))


def _teacher_state(teacher: Path) -> dict:
    state = load_file(str(teacher / "model.safetensors"))
    return {k.removeprefix("bert."): v for k, v in state.items()}


def test_shared_rows_and_special_roles_are_copied_exactly(inputs):
    out, report, state = _run(inputs, "fvt", "fvt")
    old = _teacher_state(inputs[1])["embeddings.word_embeddings.weight"]
    new = state["bert.embeddings.word_embeddings.weight"]
    for token in ["the", "drug", "kidney", "##s", ".", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]:
        assert torch.equal(new[NEW.index(token)], old[OLD.index(token)]), token
    assert report["vocabulary"] == {"shared": 19, "new": 5, "dropped": len(OLD) - 19}


def test_transformer_layers_are_the_teachers(inputs):
    _out, _report, state = _run(inputs, "fvt-layers", "fvt")
    teacher = _teacher_state(inputs[1])
    for name, value in teacher.items():
        if name.startswith(("encoder.", "embeddings.position", "embeddings.token_type", "embeddings.LayerNorm")):
            assert torch.equal(state[f"bert.{name}"], value), name


def test_fvt_row_is_the_mean_of_the_old_pieces(inputs):
    _out, report, state = _run(inputs, "fvt-rows", "fvt")
    old = _teacher_state(inputs[1])["embeddings.word_embeddings.weight"]
    new = state["bert.embeddings.word_embeddings.weight"]
    word = old[[OLD.index(p) for p in ("nephro", "##tox", "##icity")]].mean(0)
    piece = old[[OLD.index(p) for p in ("##plat", "##in")]].mean(0)  # "##platin" spelled as a continuation
    assert torch.allclose(new[NEW.index("nephrotoxicity")], word, atol=1e-6)
    assert torch.allclose(new[NEW.index("##platin")], piece, atol=1e-6)
    for unspellable in ("β", "zzz"):  # characters the old vocabulary lacks → the mean row
        assert torch.allclose(new[NEW.index(unspellable)], old.mean(0), atol=1e-6)
    assert report["fallbacks"]["fvt_unspelled_mean_row"] == 2


def test_contextual_row_is_the_mean_over_two_known_contexts(inputs):
    from transformers import AutoTokenizer, BertModel

    _out, report, state = _run(inputs, "ctx", "contextual", layer=1, calibrate=False)
    teacher = BertModel.from_pretrained(str(inputs[1])).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(inputs[1]))
    expected = []
    for sentence in (SENTENCE_1, SENTENCE_2):
        encoding = tokenizer(sentence, return_tensors="pt")
        ids = encoding["input_ids"][0].tolist()
        pieces = [i for i, t in enumerate(ids) if OLD[t] in ("cis", "##plat", "##in")]
        assert len(pieces) == 3
        with torch.no_grad():
            hidden = teacher(**encoding, output_hidden_states=True).hidden_states[1][0]
        expected.append(hidden[pieces].mean(0))
    row = state["bert.embeddings.word_embeddings.weight"][NEW.index("cisplatin")]
    assert torch.allclose(row, torch.stack(expected).mean(0), atol=1e-5)
    assert report["contexts"]["with_context"] == 3  # nephrotoxicity, cisplatin, ##platin (in carboplatin)
    assert report["fallbacks"]["contextual_no_context_fvt"] == 2  # β and zzz never occur


def test_unknown_pieces_without_context_fall_back_to_fvt(inputs):
    _out, _r, ctx_state = _run(inputs, "ctx-fallback", "contextual")
    _out, _r, fvt_state = _run(inputs, "fvt-fallback", "fvt")
    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(ctx_state[key][NEW.index("zzz")], fvt_state[key][NEW.index("zzz")])
    assert not torch.equal(ctx_state[key][NEW.index("cisplatin")], fvt_state[key][NEW.index("cisplatin")])


def test_distill_moves_only_new_rows_and_lowers_its_loss(inputs):
    _out, report, state = _run(inputs, "distill", "distill", distill_epochs=5, distill_lr=1e-2)
    _out, _r, fvt_state = _run(inputs, "fvt-distill", "fvt")
    key = "bert.embeddings.word_embeddings.weight"
    changed = ~torch.isclose(state[key], fvt_state[key]).all(1)
    assert changed[NEW.index("cisplatin")]
    assert {NEW[i] for i in changed.nonzero().flatten().tolist()} <= {"nephrotoxicity", "cisplatin", "##platin", "β", "zzz"}
    assert report["distill_losses"][-1] < report["distill_losses"][0]


def test_output_loads_with_transformers_auto_classes_and_decoder_is_tied(inputs):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out, _report, _state = _run(inputs, "auto", "fvt")
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.convert_tokens_to_ids("[CLS]") == 1
    assert tokenizer.tokenize("cisplatin nephrotoxicity") == ["cisplatin", "nephrotoxicity"]
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert (out / "distill_report.json").is_file() and (out / "distill_report.md").is_file()
    assert not any(p.name.startswith(".auto") for p in out.parent.iterdir())


def test_teacher_mlm_head_bias_and_transform_are_inherited(inputs, tmp_path):
    root, _teacher, vocab, corpus = inputs
    teacher = _write_teacher(tmp_path / "mlm_teacher", with_head=True)
    config = DistillConfig(teacher=str(teacher), vocab=str(vocab), corpus=str(corpus), out=str(tmp_path / "o"),
                           method="mean", device="cpu", probes=[], new_token_bias="pieces_min")
    run(config, log=lambda *_: None)
    old = load_file(str(teacher / "model.safetensors"))
    new = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert torch.equal(new["cls.predictions.transform.dense.weight"], old["cls.predictions.transform.dense.weight"])
    assert new["cls.predictions.bias"][NEW.index("[CLS]")] == old["cls.predictions.bias"][OLD.index("[CLS]")]
    assert new["cls.predictions.bias"][NEW.index("drug")] == old["cls.predictions.bias"][OLD.index("drug")]
    # a new token's bias is the lowest bias of its old pieces (cis ##plat ##in): new_token_bias=pieces_min
    pieces = old["cls.predictions.bias"][[OLD.index(p) for p in ("cis", "##plat", "##in")]]
    assert new["cls.predictions.bias"][NEW.index("cisplatin")] == pieces.min()


def _masked_loss(folder: Path, sentence_tokens: list[str], target: str) -> float:
    """Cross-entropy of `target` at its [MASK]ed position in `sentence_tokens` (new vocabulary)."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(folder)).eval()
    ids = [NEW.index(t) for t in ["[CLS]", *sentence_tokens, "[SEP]"]]
    at = ids.index(NEW.index(target))
    ids[at] = NEW.index("[MASK]")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, at]
    return float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([NEW.index(target)])))


def test_distill_mlm_term_makes_new_tokens_predictable_and_trains_only_their_bias(inputs, tmp_path):
    """The MSE term alone shapes the rows as inputs; the MLM term also as prediction targets."""
    _root, _teacher, vocab, corpus = inputs
    teacher = _write_teacher(tmp_path / "mlm_teacher", with_head=True)
    outs = {}
    for weight in (0.0, 1.0):
        outs[weight] = tmp_path / f"mlm{weight}"
        run(DistillConfig(teacher=str(teacher), vocab=str(vocab), corpus=str(corpus), out=str(outs[weight]),
                          method="distill", device="cpu", probes=[], distill_epochs=30, distill_lr=3e-2,
                          distill_mlm_weight=weight), log=lambda *_: None)
    sentence = ["cisplatin", "caused", "kidney", "damage", "."]
    assert _masked_loss(outs[1.0], sentence, "cisplatin") < _masked_loss(outs[0.0], sentence, "cisplatin") - 1.0
    plain = load_file(str(outs[0.0] / "model.safetensors"))["cls.predictions.bias"]
    trained = load_file(str(outs[1.0] / "model.safetensors"))["cls.predictions.bias"]
    changed = {NEW[i] for i in (~torch.isclose(plain, trained)).nonzero().flatten().tolist()}
    assert "cisplatin" in changed and changed <= {"nephrotoxicity", "cisplatin", "##platin", "β", "zzz"}


def test_distill_mlm_term_without_any_head_is_refused(inputs, tmp_path):
    from engine.distill import DistillError

    _root, teacher, vocab, corpus = inputs  # this teacher has no MLM head
    with pytest.raises(DistillError, match="needs an MLM head"):
        run(DistillConfig(teacher=str(teacher), vocab=str(vocab), corpus=str(corpus), out=str(tmp_path / "o"),
                          method="distill", device="cpu", fit_head="no", distill_mlm_weight=1.0), log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a .partial work folder


def test_same_seed_gives_identical_weights_across_processes(inputs, tmp_path):
    """Set iteration order changes with PYTHONHASHSEED; the result must not."""
    root, teacher, vocab, corpus = inputs
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"run{hash_seed}"
        subprocess.run([sys.executable, "-m", "engine.distill_init", "--teacher", str(teacher), "--vocab", str(vocab),
                        "--corpus", str(corpus), "--out", str(out), "--method", "distill", "--distill.device=cpu"],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        outputs.append(load_file(str(out / "model.safetensors")))
        saved = json.loads((out / "resolved_config.json").read_text())["distill"]
        assert (saved["method"], saved["device"], saved["teacher"]) == ("distill", "cpu", str(teacher))
    assert outputs[0].keys() == outputs[1].keys()
    for name in outputs[0]:
        assert torch.equal(outputs[0][name], outputs[1][name]), name


def test_teacher_encodings_are_cached_and_reused(inputs, tmp_path, monkeypatch):
    from engine.distill import teacher as teachers

    root, teacher, vocab, corpus = inputs
    loaded = teachers.load_teacher(teacher)
    encoded = [teachers.Encoded(ids=[2, 5, 7, 3], pool=[2]), teachers.Encoded(ids=[2, 18, 19, 20, 3], pool=[1, 2, 3])]
    first = teachers.pooled_states(loaded.encoder, encoded, [1], 0, 8, torch.device("cpu"), tmp_path, "tag")
    assert len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(teachers, "_run_chunk", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    second = teachers.pooled_states(loaded.encoder, encoded, [1], 0, 8, torch.device("cpu"), tmp_path, "tag")
    assert torch.equal(first[1], second[1])


def _cli_error(argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return str(exc.value.code)


@pytest.mark.parametrize("case", ["no_weights", "no_tokenizer", "vocab_without_mask", "empty_corpus", "out_not_empty"])
def test_bad_input_is_one_line_error_and_writes_nothing(inputs, tmp_path, case):
    root, teacher, vocab, corpus = inputs
    args = {"teacher": teacher, "vocab": vocab, "corpus": corpus, "out": tmp_path / "out"}
    if case in ("no_weights", "no_tokenizer"):
        broken = tmp_path / "teacher"
        broken.mkdir()
        for f in teacher.iterdir():
            if case == "no_weights" and f.name == "model.safetensors":
                continue
            if case == "no_tokenizer" and f.name in ("tokenizer.json", "vocab.txt"):
                continue
            (broken / f.name).write_bytes(f.read_bytes())
        args["teacher"] = broken
        expected = "model.safetensors" if case == "no_weights" else "no tokenizer"
    elif case == "vocab_without_mask":
        args["vocab"] = tmp_path / "vocab.txt"
        args["vocab"].write_text("\n".join(t for t in NEW if t != "[MASK]") + "\n", encoding="utf-8")
        expected = "[MASK]"
    elif case == "empty_corpus":
        args["corpus"] = tmp_path / "corpus"
        args["corpus"].mkdir()
        (args["corpus"] / "empty.txt").write_text("  \n", encoding="utf-8")
        expected = "corpus is empty"
    else:
        args["out"].mkdir()
        (args["out"] / "keep.txt").write_text("x")
        expected = "not empty"
    before = sorted(p.name for p in tmp_path.iterdir())
    message = _cli_error([f"--{k}={v}" for k, v in args.items()] + ["--method", "fvt"])
    assert message.startswith("error: ") and expected in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "out_not_empty":
        assert [p.name for p in args["out"].iterdir()] == ["keep.txt"]


def test_report_lists_probe_neighbours_per_method(inputs):
    _out, report, _state = _run(inputs, "probes", "contextual")
    neighbours = report["probes"]["cisplatin"]
    assert set(neighbours) == {"random", "mean", "fvt", "contextual"}
    assert all(len(v) == 5 and all(isinstance(t, str) for t, _ in v) for v in neighbours.values())
    assert json.loads((Path(_out) / "distill_report.json").read_text())["method"] == "contextual"


def test_shard_folder_works_as_the_corpus(inputs, tmp_path):
    from engine.shards import ShardOptions, build_shards, read_vocab_file

    root, teacher, vocab, corpus = inputs
    shards = tmp_path / "shards"
    documents = [(f"doc{i}", text) for i, text in enumerate(CORPUS)]
    build_shards(documents, shards, read_vocab_file(vocab), ShardOptions(seq_lens=[16], valid_fraction=0.0))
    config = DistillConfig(teacher=str(teacher), vocab=str(vocab), corpus=str(shards), out=str(tmp_path / "o"),
                           method="fvt", device="cpu", probes=[])
    report = run(config, log=lambda *_: None)
    assert report["contexts"]["with_context"] == 3


@pytest.mark.slow
def test_real_minilm_teacher_to_pubmed_vocabulary(tmp_path):
    """The real teacher → PubMed vocabulary on a small demo corpus: neighbours make sense, AutoModel loads."""
    from transformers import AutoModelForMaskedLM

    from engine.corpus.demo import demo_documents
    from tests.conftest import shared_path, teacher_dir

    teacher = teacher_dir()
    vocab = shared_path("vocab", "pubmed-uncased-abstracts-vocab.txt")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(demo_documents(num_docs=40, seed=1)):
        (corpus / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    config = DistillConfig(teacher=str(teacher), vocab=str(vocab), corpus=str(corpus), out=str(tmp_path / "out"),
                           method="contextual", k=1, device="cpu", probes=["cisplatin", "nephrotoxicity"],
                           head_windows=64, head_steps=20)
    report = run(config, log=lambda *_: None)
    assert report["vocabulary"] == {"shared": 11394, "new": 17501, "dropped": 19128}
    head = report["mlm_head_fit"]  # MiniLM has no MLM head: one is fitted on it first
    assert head["held_out_loss_fitted_head"] < head["held_out_loss_fresh_head"] - 1.0
    neighbours = [token for token, _ in report["probes"]["cisplatin"]["contextual"]]
    assert {"cis", "##pl", "##atin"} & set(neighbours), neighbours
    model = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "out"))
    assert model.config.vocab_size == 28895 and model.config.num_hidden_layers == 6


def test_stopped_run_resumes_from_cached_teacher_encodings(inputs, tmp_path, monkeypatch):
    from engine.distill import student as students
    from engine.distill import teacher as teachers

    root, teacher, vocab, corpus = inputs
    config = DistillConfig(teacher=str(teacher), vocab=str(vocab), corpus=str(corpus), out=str(tmp_path / "out"),
                           method="contextual", device="cpu", probes=[])

    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(students, "save_student", crash)
        with pytest.raises(KeyboardInterrupt):
            run(config, log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / ".out.partial" / "cache").iterdir())
    monkeypatch.setattr(teachers, "_run_chunk", lambda *a, **k: pytest.fail("teacher re-run despite the cache"))
    run(config, log=lambda *_: None)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / ".out.partial").exists()


def test_layer_beyond_the_teachers_depth_is_refused_before_writing(inputs, tmp_path):
    root, teacher, vocab, corpus = inputs
    message = _cli_error([f"--teacher={teacher}", f"--vocab={vocab}", f"--corpus={corpus}", f"--out={tmp_path / 'o'}",
                          "--method", "contextual", "--distill.layer=9"])
    assert message == "error: layer 9 asked for but the teacher has 3 layers"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "CPU", ""])
def test_unknown_distill_device_is_one_error_line(tmp_path, device, capsys):
    from engine.distill_init import main

    out = tmp_path / "init"
    with pytest.raises(SystemExit) as info:
        main(["--teacher", str(tmp_path), "--vocab", str(tmp_path), "--corpus", str(tmp_path), "--out", str(out),
              f"--distill.device={device}"])
    # A refused option exits 2 with its one line on stderr (the CLI convention of every entry script).
    assert info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message and "device" in message
    assert not out.exists() and not list(tmp_path.glob(".init*"))
