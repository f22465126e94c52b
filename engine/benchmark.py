"""Benchmarks that write JSON (figure, machine, commit, config); never timed tests.

    python engine/benchmark.py data --corpus ../shared/data/corpus/pmc_rct_fulltext --out bench/data.json
    python engine/benchmark.py train --out bench/train.json
    python engine/benchmark.py masking --out bench/masking.json
    python engine/benchmark.py distill --out bench/distill.json
    python engine/benchmark.py ner --out bench/ner.json
    python engine/benchmark.py kernels --out bench/kernels.json
    python engine/benchmark.py cluster --out bench/cluster.json
    python engine/benchmark.py parquet_rss --limit-mb 10 --out bench/parquet_rss.json

Each subcommand lives in `engine/benchmarks/<name>.py` as `add_arguments(parser)` + `run(args) -> dict`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from engine.cli import fail

SUBCOMMANDS = ["data", "train", "masking", "distill", "ner", "kernels", "cluster", "parquet_rss"]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are the house's one `error:` line with exit status 2 (engine.cli.fail).

    The benchmark subcommands keep their argparse flags (`add_arguments`), which are many and live in
    engine/benchmarks/; only the error shape follows the entry-script convention here.
    """

    def error(self, message: str):
        fail(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="benchmark.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="name", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"engine.benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"engine.benchmarks.{name}":
                raise
            continue
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    importlib.import_module(f"engine.benchmarks.{args.name}").run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
