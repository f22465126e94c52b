"""Loss and throughput curves from a run's metrics.jsonl, drawn to one PNG."""
from __future__ import annotations

import json
from pathlib import Path

from engine.io import atomic_path
from engine.training.metrics import MetricsFileError, read_metrics


class PlotError(ValueError):
    """A metrics file with nothing to plot."""


def _plottable(record: dict) -> bool:
    """Loss records need a numeric step and loss; phase marks a numeric step; others are skipped."""
    number = (int, float)
    if record.get("kind") in ("train", "valid"):
        return isinstance(record.get("step"), number) and isinstance(record.get("loss"), number)
    if record.get("kind") == "phase":
        return isinstance(record.get("step"), number)
    return True


def plot_metrics(jsonl: Path, out: Path) -> Path:
    """Two panels: train/validation loss and non-pad tokens/s against the optimizer step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not Path(jsonl).is_file():
        raise PlotError(f"metrics file not found: {jsonl}")
    out = Path(out)
    if out.is_dir():
        raise PlotError(f"--out {out}: is a folder; give the PNG file to write")
    if out.suffix.lower() != ".png":
        raise PlotError(f"--out {out}: must name a .png file")
    try:
        records = read_metrics(jsonl)
    except (MetricsFileError, OSError) as exc:
        raise PlotError(str(exc)) from None
    bad = next((r for r in records if not _plottable(r)), None)
    if bad is not None:
        raise PlotError(f"{jsonl}: a {bad.get('kind')} record without a numeric step/loss: {json.dumps(bad)[:120]}")
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    if not train:
        raise PlotError(f"{jsonl}: no 'train' records to plot")
    fig, (ax_loss, ax_speed) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train MLM loss")
    if valid:
        ax_loss.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="validation MLM loss")
    for record in records:
        if record.get("kind") == "phase":
            for ax in (ax_loss, ax_speed):
                ax.axvline(record["step"], color="grey", linestyle=":", linewidth=1)
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    speed = [r for r in train if "tokens_per_s" in r]
    ax_speed.plot([r["step"] for r in speed], [r["tokens_per_s"] for r in speed], color="tab:green")
    ax_speed.set_ylabel("non-pad tokens/s")
    ax_speed.set_xlabel("optimizer step")
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:  # creates the parent; removes the temp file on failure
            fig.savefig(tmp, dpi=110)
    except OSError as exc:
        raise PlotError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out
