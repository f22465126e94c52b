"""The NER entry script end to end on a tiny model: fine-tune, select on devel, write units, merge, refuse bad input."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.corpus.demo import write_demo_ner
from engine.evaluate_ner import main
from engine.ner.conll import read_conll
from engine.ner.finetune import FinetuneConfig, resolve_recipe
from tests.tiny_model import write_tiny_bert

QUICK = ["--epochs", "4", "--lr", "1e-2", "--batch-size", "8"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Demo data laid out as the NCBI-disease task, and a tiny BERT that knows the train words."""
    root = tmp_path_factory.mktemp("ner_eval")
    data = root / "data"
    write_demo_ner(data / "NCBI-disease", sizes=(120, 40, 40))
    words = sorted({w for s in read_conll(data / "NCBI-disease" / "train.tsv").sentences for w in s.words})
    model = write_tiny_bert(root / "tiny", words[::2])
    return root, data, model


@pytest.fixture(scope="module")
def two_seeds(setup):
    root, data, model = setup
    out = root / "two_seeds"
    main(["--model", str(model), "--data", str(data), "--seeds", "1,2", "--out", str(out), *QUICK])
    return out


@pytest.fixture(scope="module")
def separate_units(setup):
    """The same two seeds, each run alone as a SLURM array element would run it."""
    root, data, model = setup
    for seed in (1, 2):
        main(["--model", str(model), "--data", str(data), "--tasks", "ncbi-disease", "--seeds", str(seed),
              "--out", str(root / f"unit_{seed}"), *QUICK])
    return [root / "unit_1", root / "unit_2"]


def _unit(out, seed):
    return json.loads((out / "ncbi-disease" / f"seed{seed}" / "result.json").read_text())


@pytest.mark.slow
def test_fine_tuning_the_tiny_model_learns_the_demo_entities(two_seeds):
    unit = _unit(two_seeds, 1)
    assert unit["test"]["f1"] > 0.3 and unit["devel"]["f1"] > 0.3
    assert unit["recipe"]["history"][-1]["train_loss"] < unit["recipe"]["history"][0]["train_loss"]


@pytest.mark.slow
def test_resolved_config_is_saved_with_the_report(two_seeds):
    saved = json.loads((two_seeds / "resolved_config.json").read_text())
    assert saved["seeds"] == [1, 2] and saved["out"] == str(two_seeds)
    assert saved["finetune"]["epochs"] == int(QUICK[QUICK.index("--epochs") + 1])


def test_model_selection_keeps_the_best_devel_epoch(two_seeds):
    unit = _unit(two_seeds, 2)
    f1s = [h["devel_f1"] for h in unit["recipe"]["history"]]
    assert unit["best_epoch"] == 1 + f1s.index(max(f1s))
    assert unit["devel"]["f1"] == pytest.approx(max(f1s))


@pytest.mark.slow
def test_command_line_values_win_over_the_preset_in_the_written_unit(setup, two_seeds):
    recipe = _unit(two_seeds, 1)["recipe"]
    assert (recipe["lr"], recipe["epochs"], recipe["batch_size"]) == (1e-2, 4, 8)
    assert recipe["max_length"] == 128  # 512 requested by default, capped at the tiny model's positions


@pytest.mark.parametrize("task, lr, epochs, batch_size", [
    ("jnlpba", 1e-5, 5, 16), ("BC2GM", 6e-5, 50, 32), ("bc5cdr-disease", 5e-5, 8, 16),
    ("my-own-task", 5e-5, 20, 32),  # outside BLURB: the default recipe
])
def test_presets_fill_what_the_command_line_leaves_open(task, lr, epochs, batch_size):
    cpu = {"device": "cpu"}
    full = resolve_recipe(FinetuneConfig(**cpu), task, model_max_positions=512)
    assert (full.lr, full.epochs, full.batch_size) == (lr, epochs, batch_size)
    partial = resolve_recipe(FinetuneConfig(epochs=2, **cpu), task, model_max_positions=512)
    assert (partial.lr, partial.epochs, partial.batch_size) == (lr, 2, batch_size)
    overridden = resolve_recipe(FinetuneConfig(lr=1e-3, batch_size=4, **cpu), task, model_max_positions=512)
    assert (overridden.lr, overridden.epochs, overridden.batch_size) == (1e-3, epochs, 4)


@pytest.mark.slow
def test_unit_writes_predictions_next_to_gold_for_every_token(setup, two_seeds):
    _, data, _ = setup
    gold = read_conll(data / "NCBI-disease" / "test.tsv").sentences
    pred = read_conll(two_seeds / "ncbi-disease" / "seed1" / "test.pred.tsv").sentences
    assert [s.words for s in pred] == [s.words for s in gold]
    assert [[m[0] for m in s.middle] for s in pred] == [s.tags for s in gold]


@pytest.mark.slow
def test_report_has_mean_and_std_over_seeds_beside_published_numbers(two_seeds):
    report = json.loads((two_seeds / "results.json").read_text())
    f1s = [100 * _unit(two_seeds, s)["test"]["f1"] for s in (1, 2)]
    stat = report["summary"]["ncbi-disease"]["test_f1"]
    assert stat["mean"] == pytest.approx(sum(f1s) / 2)
    assert stat["std"] == pytest.approx(abs(f1s[0] - f1s[1]) / 2 ** 0.5)
    table = (two_seeds / "results.md").read_text()
    assert "89.54" in table and "87.82" in table and f"{stat['mean']:.2f} ± {stat['std']:.2f}" in table
    assert (two_seeds / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # its content: next test


def test_bar_chart_draws_our_mean_and_std_beside_each_published_model(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from engine.ner.report import bar_chart

    saved = []
    original = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k))[1])
    summary = {"ncbi-disease": {"test_f1": {"mean": 61.5, "std": 2.5},
                                "published": {"BIOptimus v0.4": 89.54, "PubMedBERT": 87.82}},
               "jnlpba": {"test_f1": {"mean": 40.0, "std": 1.0},
                          "published": {"BIOptimus v0.4": 79.46, "PubMedBERT": None}}}
    bar_chart(tmp_path / "results.png", summary, "runs/export/hf")

    (ax,) = saved[0].axes
    heights = {c.get_label(): [round(b.get_height(), 2) for b in c] for c in ax.containers if hasattr(c, "patches")}
    assert heights == {"ours": [61.5, 40.0], "BIOptimus v0.4": [89.54, 79.46], "PubMedBERT": [87.82, 0.0]}
    ours = next(c for c in ax.containers if c.get_label() == "ours")
    assert [round(float(s[1][1] - s[0][1]) / 2, 2) for s in ours.errorbar.lines[2][0].get_segments()] == [2.5, 1.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ncbi-disease", "jnlpba"]
    assert ax.get_title() == "NER (BLURB protocol): hf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.png"]


@pytest.mark.slow
def test_same_seed_gives_identical_results(two_seeds, separate_units):
    alone, together = _unit(separate_units[0], 1), _unit(two_seeds, 1)
    assert [h["train_loss"] for h in alone["recipe"]["history"]] == [h["train_loss"] for h in together["recipe"]["history"]]
    assert alone["test"] == together["test"]
    assert together["recipe"]["history"][0]["train_loss"] != _unit(two_seeds, 2)["recipe"]["history"][0]["train_loss"]


@pytest.mark.slow
def test_separately_run_units_merge_into_the_same_report(two_seeds, separate_units, tmp_path):
    main(["merge", *map(str, separate_units), "--out", str(tmp_path / "merged")])
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())["summary"]
    assert merged == json.loads((two_seeds / "results.json").read_text())["summary"]


@pytest.mark.slow
def test_merge_refuses_the_same_task_and_seed_twice(two_seeds, tmp_path):
    shutil.copytree(two_seeds / "ncbi-disease", tmp_path / "copy")
    with pytest.raises(SystemExit, match="error: .*seed 1 also in"):
        main(["merge", str(two_seeds), str(tmp_path / "copy"), "--out", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_long_sentences_train_in_windows(setup, tmp_path):
    _, data, model = setup
    main(["--model", str(model), "--data", str(data), "--seeds", "1", "--out", str(tmp_path), "--max-length", "12",
          "--epochs", "1", "--max-train-sentences", "30"])
    unit = _unit(tmp_path, 1)
    assert unit["sizes"]["train"] == 30 and unit["train_windows"] > 30
    assert unit["recipe"]["max_length"] == 12


def test_half_precision_model_folder_is_loaded_as_float32_master_weights(setup, tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.ner.model_io import load_token_classifier
    model = shutil.copytree(setup[2], tmp_path / "fp16")
    weights = load_file(model / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, model / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "dtype": "float16"}))
    classifier = load_token_classifier(model, ["O", "B-Chemical", "I-Chemical"])
    assert {p.dtype for p in classifier.parameters()} == {torch.float32}


def test_diverging_run_stops_with_an_error(setup, tmp_path):
    with pytest.raises(SystemExit, match="error: .*training loss is nan.*diverged"):
        main(["--model", str(setup[2]), "--data", str(setup[1]), "--seeds", "1", "--out", str(tmp_path / "out"),
              "--epochs", "1", "--lr", "1e30", "--batch-size", "8", "--finetune.max_grad_norm=0"])
    assert not (tmp_path / "out" / "ncbi-disease" / "seed1" / "result.json").exists()


# --- bad input: one-line error naming file and line, non-zero exit, nothing written ---

def _copy_data(setup, tmp_path):
    _, data, _ = setup
    shutil.copytree(data, tmp_path / "data")
    return tmp_path / "data" / "NCBI-disease"


def _refused(setup, tmp_path, *extra, model=None, match):
    _, _, tiny = setup
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=match) as info:
        main(["--model", str(model or tiny), "--data", str(tmp_path / "data"), "--seeds", "1", "--out", str(out),
              *QUICK, *extra])
    assert "\n" not in str(info.value.code)
    assert not out.exists()


def test_empty_train_file_is_refused(setup, tmp_path):
    (_copy_data(setup, tmp_path) / "train.tsv").write_text("")
    _refused(setup, tmp_path, match=r"error: .*train\.tsv: empty file")


def test_line_with_wrong_columns_is_refused_with_its_line(setup, tmp_path):
    path = _copy_data(setup, tmp_path) / "devel.tsv"
    lines = path.read_text().split("\n")
    lines[6] = "word\tNN\tO"
    path.write_text("\n".join(lines))
    _refused(setup, tmp_path, match=r"error: .*devel\.tsv:7: expected 2 columns")


def test_unknown_tag_scheme_is_refused(setup, tmp_path):
    path = _copy_data(setup, tmp_path) / "train.tsv"
    path.write_text(path.read_text().replace("B-Chemical", "Z-Chemical", 1))
    _refused(setup, tmp_path, match=r"error: .*train\.tsv:\d+: tag 'Z-Chemical' is not in a known scheme")


def test_i_after_o_is_refused_in_strict_mode_and_repaired_on_request(setup, tmp_path):
    path = _copy_data(setup, tmp_path) / "test.tsv"
    path.write_text("the\tO\ncisplatin\tI-Chemical\n\n" + path.read_text())
    _refused(setup, tmp_path, match=r"error: .*test\.tsv:2: I-Chemical follows O .*--repair-iob")
    with pytest.warns(UserWarning, match="repaired 1"):
        main(["--model", str(setup[2]), "--data", str(tmp_path / "data"), "--seeds", "1", "--out",
              str(tmp_path / "repaired"), "--epochs", "1", "--repair-iob"])
    assert _unit(tmp_path / "repaired", 1)["repaired"]["test"] == 1


def test_test_label_absent_from_train_is_refused(setup, tmp_path):
    path = _copy_data(setup, tmp_path) / "test.tsv"
    path.write_text("aspirin\tB-Gene\n\n" + path.read_text())
    _refused(setup, tmp_path, match=r"error: .*test\.tsv:1: label 'B-Gene' does not occur in train")


def test_model_folder_without_tokenizer_is_refused(setup, tmp_path):
    _copy_data(setup, tmp_path)
    model = shutil.copytree(setup[2], tmp_path / "model")
    (model / "tokenizer.json").unlink()
    _refused(setup, tmp_path, model=model, match=r"error: .*model: no tokenizer")


@pytest.mark.parametrize("layout", [("latest",), ("global_step10/mp_rank_00_model_states.pt",),
                                    ("step_00000200/zero_pp_rank_0_mp_rank_00_model_states.pt",),
                                    ("run_state.json",)])
def test_incomplete_deepspeed_checkpoint_is_taken_for_one_and_refused(setup, tmp_path, layout):
    _copy_data(setup, tmp_path)
    ckpt = tmp_path / "ckpt"
    for name in layout:
        (ckpt / name).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / name).write_text("")
    _refused(setup, tmp_path, model=ckpt, match=r"error: .*ckpt: cannot export the checkpoint: no complete checkpoint")


def test_unknown_option_is_refused_with_usage_exit_status(setup, tmp_path, capsys):
    _copy_data(setup, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(setup[2]), "--data", str(tmp_path / "data"), "--out", str(out), "--finetune.learning_rate=1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown config key finetune.learning_rate")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is present")
def test_cuda_requested_without_a_gpu_is_refused(setup, tmp_path):
    _copy_data(setup, tmp_path)
    _refused(setup, tmp_path, "--device", "cuda", match=r"error: --device cuda was asked for but no CUDA device")


def test_out_holding_another_models_results_is_refused_and_kept(setup, tmp_path):
    _, data, tiny = setup
    out = tmp_path / "out"
    out.mkdir()
    report = json.dumps({"kind": "bioptimus-ner-report", "model": str(tmp_path / "someone_elses_model")})
    (out / "results.json").write_text(report)
    with pytest.raises(SystemExit, match=r"error: .*out: holds NER results of another model") as info:
        main(["--model", str(tiny), "--data", str(data), "--seeds", "1", "--out", str(out), *QUICK])
    assert "\n" not in str(info.value.code)
    assert [p.name for p in out.iterdir()] == ["results.json"] and (out / "results.json").read_text() == report


@pytest.mark.parametrize("drop", [("task",), ("test", "f1"), ("recipe",), ("seed",)])
def test_merge_of_a_unit_missing_a_field_is_one_line_and_writes_nothing(tmp_path, drop):
    unit = {"kind": "bioptimus-ner-unit", "task": "ncbi-disease", "seed": 1, "model": "m", "best_epoch": 2,
            "wall_s": 1.0, "sizes": {"train": 10}, "devel": {"f1": 0.5},
            "test": {"f1": 0.5, "precision": 0.5, "recall": 0.5},
            "recipe": {"epochs": 3, "lr": 1e-3, "batch_size": 8, "device": "cpu"}}
    holder = unit
    for key in drop[:-1]:
        holder = holder[key]
    del holder[drop[-1]]
    path = tmp_path / "units" / "ncbi-disease" / "seed1" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(unit))
    with pytest.raises(SystemExit) as info:
        main(["merge", str(tmp_path / "units"), "--out", str(tmp_path / "merged")])
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert str(path) in message and ".".join(drop) in message
    assert not (tmp_path / "merged").exists()


def test_tokenizer_swapped_into_an_exported_model_folder_is_refused(setup, tmp_path):
    from engine.shards.vocab import build_tokenizer, load_tokenizer, save_tokenizer, vocab_list, vocabulary_sha256

    _copy_data(setup, tmp_path)
    model = shutil.copytree(setup[2], tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_sha256": vocabulary_sha256(model)}))
    tokens = vocab_list(load_tokenizer(model))
    tokens[-1], tokens[-2] = tokens[-2], tokens[-1]  # same size, two rows meaning other words
    save_tokenizer(build_tokenizer(tokens), model)
    _refused(setup, tmp_path, model=model, match=r"error: .*model: the tokenizer is not the vocabulary the model")
