"""Plot loss and throughput curves of a pre-training run to a PNG.

    python engine/plot_metrics.py runs/demo/pretrain/metrics.jsonl --out runs/demo/curves.png
"""
from __future__ import annotations

import argparse
import sys

from engine.training.plots import PlotError, plot_metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.jsonl written by engine/pretrain.py")
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        print(plot_metrics(args.metrics, args.out))
    except PlotError as exc:
        sys.exit(f"error: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
