"""One CLI convention for every entry script: typed config, `--config FILE`, `--section.key=value`,
documented flags as aliases, one-line `error:` with exit status 2, `--help` from the field comments,
the resolved config saved beside the outputs; and every command the docs show still parses."""
from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from engine.cli import CONFIG_FILE, Flag, parse_command, parse_config, save_config
from engine.config import to_dict

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Optim:
    name: Literal["adamw", "lamb"] = "adamw"  # optimizer
    lr: float = 1e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # moment decay rates


@dataclass
class Toy:
    source: Path  # where the input comes from
    steps: int = 10  # optimizer steps
    overwrite: bool = False  # replace what is there
    sizes: list[int] = field(default_factory=lambda: [128])  # one set per size
    extra: dict[str, Any] = field(default_factory=dict)  # free settings
    optim: Optim = field(default_factory=Optim)  # optimizer section


TOY_FLAGS = [Flag("--seq-len", "sizes", many=True), Flag("--quick", "steps", value=1),
             Flag("--resume", "resume", extra=True, help="where to continue from")]


def toy(*argv: str) -> Toy:
    return parse_config(Toy, list(argv), "Toy tool.", TOY_FLAGS, positionals=["source"])


def usage_error(capsys, *argv: str) -> str:
    """The stderr line of a refused command line, after checking it is one `error:` line and exit 2."""
    with pytest.raises(SystemExit) as exc:
        toy(*argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_file_then_command_line_left_to_right(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('source = "from_file"\nsteps = 5\n[optim]\nlr = 0.5\nname = "lamb"\n')
    config = toy("--config", str(path), "--steps=6", "--optim.lr", "0.25", "--steps=7")
    assert config == Toy(source=Path("from_file"), steps=7, optim=Optim(name="lamb", lr=0.25))


def test_aliases_positionals_bare_bools_and_extras():
    config, extras = parse_command(Toy, ["data", "--seq-len", "64", "256", "--overwrite", "--quick",
                                         "--resume", "auto"], "Toy tool.", TOY_FLAGS, ["source"])
    assert config == Toy(source=Path("data"), steps=1, overwrite=True, sizes=[64, 256])
    assert extras == {"resume": "auto"}


@pytest.mark.parametrize("argv, pattern", [
    (["s", "--optim.lrr=1"], r"unknown config key optim\.lrr \(known in optim: betas, lr, name\)"),
    (["s", "--stepz=1"], r"unknown config key stepz .*documented flags: --seq-len, --quick, --resume"),
    (["s", "--optim.name=sgd"], r"optim\.name: 'sgd' is not one of \['adamw', 'lamb'\]"),
    (["s", "--steps=nan"], r"steps: expected an integer, got 'nan'"),
    (["s", "--steps=inf"], r"steps: expected an integer, got 'inf'"),
    (["s", "--steps=2.5"], r"steps: expected an integer"),
    (["s", "--optim.lr=nan"], r"optim\.lr: expected a finite number, got 'nan'"),
    (["s", "--optim.lr=-inf"], r"optim\.lr: expected a finite number"),
    (["s", "--sizes=[1,2"], r"sizes: expected a list in JSON, cannot parse"),
    (["s", "--sizes=1,x"], r"sizes\[1\]: expected an integer, got 'x'"),
    (["s", "--extra={bad"], r"extra: expected a table in JSON, cannot parse"),
    (["s", "--extra=[1]"], r"extra: expected a table, got \[1\]"),
    (["s", "--optim.betas=0.9"], r"optim\.betas: expected 2 values, got 1"),
    (["s", "--optim=3"], r"optim: expected a table"),
    (["s", "--steps"], r"--steps needs a value"),
    (["s", "--seq-len"], r"--seq-len needs at least one value"),
    (["s", "--quick=2"], r"--quick takes no value"),
    (["s", "t"], r"unexpected argument 't'"),
    ([], r"missing required option --source"),
    (["s", "--config", "nope.toml"], r"config file not found: nope\.toml"),
])
def test_bad_command_lines_are_one_error_line_with_exit_2(capsys, argv, pattern):
    assert re.search(pattern, usage_error(capsys, *argv))


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_in_a_toml_file_are_refused(capsys, tmp_path, value):
    path = tmp_path / "run.toml"
    path.write_text(f"[optim]\nlr = {value}\n")
    assert re.search(r"optim\.lr: expected a finite number", usage_error(capsys, "s", "--config", str(path)))


def test_help_lists_every_field_with_type_default_and_comment(capsys):
    with pytest.raises(SystemExit) as exc:
        toy("--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--optim.name={adamw|lamb}  optimizer (default: \"adamw\")" in text
    assert "--source=PATH  where the input comes from (required)" in text
    assert "--sizes=list[INT]  one set per size (default: [128])  (also --seq-len V [V ...])" in text
    assert "--resume VALUE  where to continue from" in text


def test_saved_config_is_the_resolved_config_and_leaves_no_temp_file(tmp_path):
    config = toy("s", "--optim.lr=0.5")
    path = save_config(config, tmp_path)
    assert path == tmp_path / CONFIG_FILE and [p.name for p in tmp_path.iterdir()] == [CONFIG_FILE]
    assert json.loads(path.read_text()) == to_dict(config)


# Each entry script: its parse_args, a valid command line, an override, a documented flag, a bad choice.
SCRIPTS = {
    "prepare_data": dict(base=["--corpus", "c", "--out", "o", "--vocab-size", "500"],
                         override=(["--shards.pack_buffer=17"], lambda c: c.shards.pack_buffer == 17),
                         alias=(["--seq-len", "64", "128", "--cased", "--min-frequency", "3",
                                 "--text-field", "title,abstract", "--id-field", "pmid"],
                                lambda c: c.shards.seq_lens == [64, 128] and not c.shards.lowercase
                                and c.min_frequency == 3
                                and (c.text_field, c.id_field) == (["title", "abstract"], "pmid")),
                         choice="--format=docx"),
    "distill_init": dict(base=["--teacher", "t", "--vocab", "v", "--corpus", "c", "--out", "o"],
                         override=(["--distill.k=4"], lambda c: c.distill.k == 4),
                         alias=(["--method", "contextual"], lambda c: c.distill.method == "contextual"),
                         choice="--distill.method=best"),
    "evaluate_ner": dict(base=["--model", "m", "--data", "d", "--out", "o"],
                         override=(["--finetune.warmup_ratio=0.2"], lambda c: c.finetune.warmup_ratio == 0.2),
                         alias=(["--epochs", "2", "--batch-size", "8", "--repair-iob", "--seeds", "4,5",
                                 "--entity-type", "Gene", "--scheme", "bioes"],
                                lambda c: (c.finetune.epochs, c.finetune.batch_size, c.repair_iob, c.seeds,
                                           c.entity_type, c.scheme) == (2, 8, True, [4, 5], "Gene", "bioes")),
                         choice="--device=tpu"),
    "export_hf": dict(base=["ckpt", "hf"],
                      override=(["--tokenizer=tok"], lambda c: c.tokenizer == Path("tok")),
                      alias=(["--overwrite"], lambda c: c.overwrite and c.checkpoint == Path("ckpt")),
                      choice=None),
    "plot_metrics": dict(base=["metrics.jsonl", "--out", "curves.png"],
                         override=(["--out=other.png"], lambda c: c.out == Path("other.png")),
                         alias=([], lambda c: c.metrics == Path("metrics.jsonl")),
                         choice=None),
    "pretrain": dict(base=["--config", str(ROOT / "configs/tiny_demo.toml")],
                     override=(["--optim.lr=5e-4", "--model.compile=true"],
                               lambda c: c[0].optim.lr == 5e-4 and c[0].model.compile),
                     alias=(["--resume", "auto", "--local_rank=0"], lambda c: c[1] == {"resume": "auto", "local_rank": "0", "dry_run": None}),
                     choice="--optim.name=sgd"),
    "study": dict(base=["--size", "tiny"], override=(["--work=w"], lambda c: c.work == Path("w")),
                  alias=(["--report-only", "--out", "docs/x"], lambda c: c.report_only and c.out == Path("docs/x")),
                  choice="--size=huge"),
    "demo": dict(base=[], override=(["--steps=5"], lambda c: c.steps == 5),
                 alias=(["--vocab-size", "300", "--ner-epochs", "2"], lambda c: (c.vocab_size, c.ner_epochs) == (300, 2)),
                 choice="--method=best"),
}


def script(name: str):
    return importlib.import_module(f"engine.{name}")


def refused(capsys, name: str, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        script(name).main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("name", SCRIPTS)
def test_override_sets_the_field(name):
    spec = SCRIPTS[name]
    argv, check = spec["override"]
    assert check(script(name).parse_args(spec["base"] + argv))


@pytest.mark.parametrize("name", SCRIPTS)
def test_documented_flags_stay_aliases(name):
    spec = SCRIPTS[name]
    argv, check = spec["alias"]
    assert check(script(name).parse_args(spec["base"] + argv))


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_key_is_one_line_error_with_exit_2(capsys, tmp_path, name):
    assert "unknown config key no_such_key" in refused(capsys, name, SCRIPTS[name]["base"] + ["--no_such_key=1"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [n for n, spec in SCRIPTS.items() if spec["choice"]])
def test_bad_choice_names_the_option_and_the_allowed_values(capsys, name):
    option, value = SCRIPTS[name]["choice"].removeprefix("--").split("=")
    assert re.search(rf"{re.escape(option)}: '{value}' is not one of \[.+\]",
                     refused(capsys, name, SCRIPTS[name]["base"] + [SCRIPTS[name]["choice"]]))


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_every_config_field(capsys, name):
    with pytest.raises(SystemExit) as exc:
        script(name).parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    config = script(name).parse_args(SCRIPTS[name]["base"])
    config = config[0] if isinstance(config, tuple) else config

    def keys(data: dict, prefix: str = ""):
        for key, value in data.items():
            if isinstance(value, dict) and value and key not in ("overrides", "extra"):
                yield from keys(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    missing = [key for key in keys(to_dict(config)) if f"--{key}=" not in text]
    assert not missing


def test_evaluate_ner_merge_takes_folders_then_out():
    config = script("evaluate_ner").parse_args(["merge", "a", "b", "--out", "m"])
    assert (config.folders, config.out) == (["a", "b"], "m")


# Every command the README, docs/ and the scripts' own docstrings show must still parse.
BENCHMARK = "benchmark"  # keeps argparse subcommands (engine/benchmarks/*.add_arguments); parsed below
COMMAND = re.compile(r"\b(?:python|deepspeed|torchrun)\b[^`|]*?(?:engine/(\w+)\.py|-m engine\.(\w+))\b(.*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    sources = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
               for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    sources.update({f"engine/{name}.py docstring": script(name).__doc__ for name in SCRIPTS})
    commands = []
    for where, text in sources.items():
        for line in text.replace("\\\n", " ").splitlines():
            match = COMMAND.search(line)
            if not match or (match.group(1) or match.group(2)) not in {*SCRIPTS, BENCHMARK}:
                continue
            if "`" in line[:match.start()]:
                continue  # inline code in prose names a command, often shortened; code blocks give whole ones
            rest = match.group(3).split(" #")[0].strip().rstrip(".")  # a docstring sentence may end with one
            commands.append((where, match.group(1) or match.group(2), shlex.split(rest)))
    return commands


def test_docs_show_commands_of_every_entry_script():
    assert {name for _, name, _ in documented_commands()} == {*SCRIPTS, BENCHMARK}


@pytest.mark.parametrize("where, name, argv", documented_commands())
def test_documented_command_parses(where, name, argv, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs/*.toml are named relative to the repository
    if name == BENCHMARK:
        script(name).build_parser().parse_args(argv)
    else:
        script(name).parse_args(argv)


def test_benchmark_usage_error_is_one_line_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        script(BENCHMARK).main(["masking", "--no-such-flag"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: benchmark.py: unrecognized arguments: --no-such-flag"]


def test_plot_metrics_saves_its_resolved_config_beside_the_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 5.0 - s / 10, "tokens_per_s": 100.0})
                               + "\n" for s in range(1, 6)))
    assert script("plot_metrics").main([str(metrics), "--out", str(tmp_path / "curves.png")]) == 0
    assert json.loads((tmp_path / "curves.config.json").read_text()) == {"metrics": str(metrics),
                                                                       "out": str(tmp_path / "curves.png")}


@pytest.mark.parametrize("body, status, stderr", [
    ("return 75", 75, ""),
    ("sys.exit('error: bad shards')", 1, "error: bad shards\n"),
    ("fail('unknown option --x')", 2, "error: unknown option --x\n"),
    ("print('trained', end='')", 0, ""),
])
def test_entry_points_leave_with_their_status_and_skip_interpreter_finalization(body, status, stderr):
    """pretrain.py's exit: the status of main, buffered output flushed, and no atexit/finalization step run
    (where gloo's threads can abort a finished multi-rank run)."""
    script = textwrap.dedent(f"""
        import atexit, sys
        from engine.cli import exit_without_finalizing, fail
        atexit.register(lambda: print("finalized", file=sys.stderr))
        def main():
            {body}
        exit_without_finalizing(main)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert (result.returncode, result.stderr) == (status, stderr)
    assert result.stdout == ("trained" if status == 0 else "")
