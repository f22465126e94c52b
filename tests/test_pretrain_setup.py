"""`engine/pretrain.py` before step 1: bad input stops with one `error:` line and writes nothing;
a HF folder can be the starting point."""
from __future__ import annotations

import contextlib
import io

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.bert.config import preset
from engine.bert.hf_io import save_hf_folder
from engine.bert.modeling import BertForMaskedLM
from engine.config import load_config
from engine.corpus.demo import demo_documents
from engine.pretrain import main
from engine.shards import ShardOptions, build_shards, train_vocab
from engine.training.config import PretrainConfig
from engine.training.setup import Dist, prepare_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain_setup") / "shards"
    docs = demo_documents(200, seed=1)
    build_shards([(f"d{i}", d) for i, d in enumerate(docs)], root, train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    return root


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def args(shards: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs/tiny_demo.toml"), f"--data.shards={shards}", "--seq_len=64",
            "--steps=4", f"--out_dir={out_dir}", *extra]


def fails_cleanly(argv: list[str], out_dir: Path) -> str:
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(stderr):
        main(argv)
    # a config the parser refuses exits 2 with the line on stderr; later bad input exits with the line
    message = stderr.getvalue().strip() if exc.value.code == 2 else str(exc.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert not out_dir.exists(), "a failed start must not write anything"
    return message


def test_unknown_config_key_is_named_with_usage_exit_status(shards, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(args(shards, out, "--optim.lrr=1"))
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown config key optim.lrr")
    assert not out.exists()


def test_shards_with_another_vocabulary_size_are_refused(shards, tmp_path):
    out = tmp_path / "run"
    message = fails_cleanly(args(shards, out, '--model.overrides={"vocab_size": 2048}'), out)
    assert "vocabulary of 1024" in message and "vocab_size=2048" in message


def test_shards_longer_than_the_position_table_are_refused(shards, tmp_path):
    out = tmp_path / "run"
    message = fails_cleanly(args(shards, out, '--model.overrides={"max_position_embeddings": 32}'), out)
    assert "seq_len 64" in message and "max_position_embeddings=32" in message


def test_missing_shard_folder_is_named(tmp_path):
    out = tmp_path / "run"
    assert "no shard folder at" in fails_cleanly(args(tmp_path / "nope", out), out)


def test_zero_config_that_does_not_fit_the_world_size_is_refused(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "run"
    message = fails_cleanly(args(shards, out, "--batch.micro=8", "--batch.global_batch=8"), out)
    assert "batch.global_batch=8" in message and "2 ranks = 16" in message


@pytest.mark.slow
def test_checkpoint_of_another_model_shape_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    made = subprocess.run([sys.executable, "engine/pretrain.py", *args(shards, out, "--eval.interval=0",
                           "--logging.progress_bar=false")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        main(args(shards, out, '--model.overrides={"hidden_size": 32}', "--resume", "auto"))
    assert "different model shape" in str(exc.value.code) and "hidden_size 64 vs 32" in str(exc.value.code)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_run_starts_from_the_weights_of_a_hf_folder(shards, tmp_path):
    torch.manual_seed(5)
    source = BertForMaskedLM(preset("tiny", vocab_size=1024))
    folder = save_hf_folder(source, tmp_path / "hf", tokenizer_dir=shards)
    config = load_config(PretrainConfig, ROOT / "configs/tiny_demo.toml",
                         [f"--data.shards={shards}", "--seq_len=64", "--steps=4", f"--out_dir={tmp_path / 'run'}",
                          f"--model.init_from={folder}"])
    plan = prepare_run(config, Dist(0, 1, 0, torch.device("cpu")), resume=None)
    plan.stream.close()
    theirs = source.state_dict()
    assert all(torch.equal(tensor, theirs[name]) for name, tensor in plan.model.state_dict().items())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_run_configs_parse(path):
    config = load_config(PretrainConfig, path)
    assert config.steps and config.deepspeed.config.is_file()


def _losses(out_dir: Path) -> dict[int, float]:
    import json
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.mark.slow
def test_compiled_layers_train_like_eager_ones(shards, tmp_path):
    """model.compile changes speed, not the maths: same losses (dropout off: its RNG differs) and the
    same parameter names, so checkpoints and exports do not care."""
    no_dropout = '--model.overrides={"hidden_dropout": 0.0, "attention_dropout": 0.0}'
    main(args(shards, tmp_path / "eager", no_dropout, "--logging.interval=1"))
    main(args(shards, tmp_path / "compiled", no_dropout, "--logging.interval=1", "--model.compile=true"))
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3, 4]
    assert all(abs(eager[s] - compiled[s]) < 1e-4 for s in eager), (eager, compiled)
    assert eager[1] != eager[4]  # the steps did train


def test_compile_with_zero3_is_refused(shards, tmp_path):
    message = fails_cleanly(args(shards, tmp_path / "out", "--model.compile=true", "--deepspeed.zero_stage=3"),
                            tmp_path / "out")
    assert "model.compile" in message and "ZeRO stage 3" in message


def test_compile_wraps_every_layer_and_keeps_parameter_names(shards, tmp_path):
    def plan_for(*extra):
        config = load_config(PretrainConfig, ROOT / "configs/tiny_demo.toml",
                             [f"--data.shards={shards}", "--seq_len=64", "--steps=4", f"--out_dir={tmp_path}", *extra])
        plan = prepare_run(config, Dist(0, 1, 0, torch.device("cpu")), resume=None)
        plan.stream.close()
        return plan.model

    eager, compiled = plan_for(), plan_for("--model.compile=true")
    assert all(layer._compiled_call_impl is not None for layer in compiled.bert.encoder.layer)
    assert all(layer._compiled_call_impl is None for layer in eager.bert.encoder.layer)
    assert list(compiled.state_dict()) == list(eager.state_dict())


def plan_for(shards: Path, out_dir: Path, *extra: str):
    config = load_config(PretrainConfig, ROOT / "configs/tiny_demo.toml",
                         [f"--data.shards={shards}", "--seq_len=64", "--steps=4", f"--out_dir={out_dir}", *extra])
    plan = prepare_run(config, Dist(0, 1, 0, torch.device("cpu")), resume=None)
    plan.stream.close()
    return plan


@pytest.fixture(scope="module")
def shards_of_another_vocabulary(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain_setup_vocab") / "shards"
    docs = demo_documents(200, seed=1)
    build_shards([(f"d{i}", d) for i, d in enumerate(docs)], root, train_vocab(docs, 700),
                 ShardOptions(seq_lens=[64], valid_fraction=0.05))
    return root


def test_model_vocabulary_follows_the_shards_when_not_set(shards_of_another_vocabulary, tmp_path):
    plan = plan_for(shards_of_another_vocabulary, tmp_path / "run")
    vocab = plan.stream.shard_sets[64].vocab_size
    assert vocab != 1024  # the tiny preset's size: following it would be the old bug
    assert plan.model_config.vocab_size == vocab
    assert plan.model.cls.predictions.decoder.weight.shape[0] == plan.model_config.padded_vocab_size


def test_explicit_vocabulary_size_that_disagrees_with_the_shards_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    message = fails_cleanly(args(shards, out, "--model.vocab_size=2048"), out)
    assert "vocabulary of 1024" in message and "vocab_size=2048" in message


def test_every_model_field_is_settable_as_model_dot_field(shards, tmp_path):
    from engine.bert.config import BertConfig
    from engine.training.config import ModelSection

    assert {f.name for f in dataclasses.fields(BertConfig)} <= {f.name for f in dataclasses.fields(ModelSection)}
    plan = plan_for(shards, tmp_path / "run", "--model.hidden_size=32", "--model.num_heads=4",
                    "--model.intermediate_size=48", "--model.hidden_dropout=0.0", "--model.layer_norm_eps=1e-6",
                    '--model.overrides={"num_layers": 3}')
    config = plan.model_config
    assert (config.hidden_size, config.num_heads, config.intermediate_size, config.num_layers) == (32, 4, 48, 3)
    assert (config.hidden_dropout, config.layer_norm_eps, config.vocab_size) == (0.0, 1e-6, 1024)
    assert len(plan.model.bert.encoder.layer) == 3


def test_a_field_set_two_ways_with_different_values_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    message = fails_cleanly(args(shards, out, "--model.hidden_size=32", '--model.overrides={"hidden_size": 48}'), out)
    assert "model.hidden_size=32" in message and "hidden_size=48" in message


def test_unknown_model_field_in_overrides_is_named(shards, tmp_path):
    out = tmp_path / "run"
    assert "unknown field(s) ['hiden_size']" in fails_cleanly(args(shards, out, '--model.overrides={"hiden_size": 3}'),
                                                              out)


@pytest.mark.slow
def test_docstring_command_runs_on_the_shards_make_demo_leaves(tmp_path):
    """`python engine/pretrain.py --config configs/tiny_demo.toml`, as engine/pretrain.py's docstring
    says, in a folder laid out like the repository after `make demo` (shards of the demo's own
    vocabulary, not the tiny preset's 1024)."""
    docs = demo_documents(300, seed=0)
    build_shards([(f"demo{i}", d) for i, d in enumerate(docs)], tmp_path / "runs/demo/shards", train_vocab(docs, 1500),
                 ShardOptions(seq_lens=[128], valid_fraction=0.05))
    for folder in ("configs", "ds_configs", "engine"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "engine/pretrain.py", "--config", "configs/tiny_demo.toml"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs/tiny_demo/checkpoints/step_00000200/COMPLETE").is_file()


def _shuffled_tokenizer_folder(shards: Path, out: Path) -> Path:
    """The shards' vocabulary with two ordinary tokens swapped: same size, other identity."""
    from engine.shards.vocab import load_tokenizer, save_tokenizer, build_tokenizer, vocab_list

    tokens = vocab_list(load_tokenizer(shards))
    tokens[-1], tokens[-2] = tokens[-2], tokens[-1]
    save_tokenizer(build_tokenizer(tokens), out)
    return out


def test_init_folder_with_a_shuffled_vocabulary_of_the_same_size_is_refused(shards, tmp_path):
    source = BertForMaskedLM(preset("tiny", vocab_size=1024))
    folder = save_hf_folder(source, tmp_path / "hf", tokenizer_dir=_shuffled_tokenizer_folder(shards, tmp_path / "tok"))
    out = tmp_path / "run"
    message = fails_cleanly(args(shards, out, f"--model.init_from={folder}"), out)
    assert "model.init_from" in message and "hold different vocabularies" in message
