"""Plot loss and throughput curves of a pre-training run to a PNG.

    python engine/plot_metrics.py runs/demo/pretrain/metrics.jsonl --out runs/demo/curves.png
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from engine.cli import parse_config, print_config, save_config
from engine.training.plots import PlotError, plot_metrics


@dataclass
class PlotConfig:
    """What `engine/plot_metrics.py` reads (METRICS may be given bare)."""

    metrics: Path  # metrics.jsonl written by engine/pretrain.py
    out: Path  # PNG file to write; the resolved config goes beside it as <name>.config.json


def parse_args(argv: list[str] | None) -> PlotConfig:
    return parse_config(PlotConfig, argv, __doc__, positionals=["metrics"])


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print_config(config, "plot_metrics")
    try:
        print(plot_metrics(config.metrics, config.out))
    except PlotError as exc:
        sys.exit(f"error: {exc}")
    save_config(config, config.out.with_name(config.out.stem + ".config.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
