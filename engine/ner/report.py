"""Unit results → one report: results.json, results.md (mean ± std beside published numbers), results.png.

Each (task, seed) unit writes its own `result.json`, so units can run anywhere (a SLURM array, one
process per GPU) and be merged afterwards by pointing `merge` at the folders that hold them.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from engine.io import atomic_path, atomic_write_text
from engine.ner.errors import NerError
from engine.ner.tasks import PUBLISHED

UNIT_KIND = "bioptimus-ner-unit"
REPORT_KIND = "bioptimus-ner-report"
TASK_ORDER = ["bc5cdr-chem", "bc5cdr-disease", "ncbi-disease", "bc2gm", "jnlpba"]


# What the report reads from each unit result.json (field path → type).
UNIT_FIELDS = {
    ("task",): str, ("seed",): int, ("model",): str, ("best_epoch",): int, ("wall_s",): (int, float),
    ("sizes", "train"): int, ("devel", "f1"): (int, float), ("test", "f1"): (int, float),
    ("test", "precision"): (int, float), ("test", "recall"): (int, float),
    ("recipe", "epochs"): int, ("recipe", "lr"): (int, float), ("recipe", "batch_size"): int,
    ("recipe", "device"): str,
}


def check_unit_fields(path: Path, unit: dict) -> None:
    """A unit result.json missing a field the report needs is named before anything is written."""
    for keys, kind in UNIT_FIELDS.items():
        value = unit
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise NerError(f"{path}: unit result lacks field {'.'.join(keys)} (or it is not a "
                           f"{getattr(kind, '__name__', 'number')})")


def check_out_holds_no_other_model(out_dir: str | Path, model: str | Path) -> None:
    """Refuse an OUT whose report or unit results come from another model: writing there would
    overwrite them and mix two models' units into one report."""
    out = Path(out_dir)
    if not out.is_dir():
        return
    mine = Path(model).resolve()
    for path in sorted(out.rglob("result*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("kind") not in (UNIT_KIND, REPORT_KIND):
            continue
        other = record.get("model")
        if isinstance(other, str) and Path(other).resolve() != mine:
            raise NerError(f"{out}: holds NER results of another model ({other}, in {path}); "
                           f"choose another --out")


def find_unit_results(folders: list[str | Path]) -> list[dict]:
    """Every unit `result.json` under `folders` (recursively); a (task, seed) found twice is an error."""
    units, seen = [], {}
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise NerError(f"{folder}: folder not found")
        paths = [folder] if folder.is_file() else sorted(folder.rglob("result.json"))
        for path in paths:
            try:
                unit = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise NerError(f"{path}:{exc.lineno}: cannot parse JSON: {exc.msg}") from None
            if not isinstance(unit, dict) or unit.get("kind") != UNIT_KIND:
                continue
            check_unit_fields(path, unit)
            key = (unit["task"], unit["seed"])
            if key in seen:
                raise NerError(f"{path}: task {key[0]} seed {key[1]} also in {seen[key]}")
            seen[key] = path
            units.append(unit)
    if not units:
        raise NerError(f"no unit result.json files under {', '.join(map(str, folders))}")
    models = sorted({unit["model"] for unit in units})
    if len(models) > 1:
        raise NerError(f"units come from different models: {', '.join(models)}")
    return sorted(units, key=lambda u: (_task_rank(u["task"]), u["seed"]))


def _task_rank(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) in percent."""
    pct = [100 * v for v in values]
    return {"mean": statistics.fmean(pct), "std": statistics.stdev(pct) if len(pct) > 1 else 0.0, "n": len(pct)}


def summarise(units: list[dict]) -> dict:
    """Per task: seeds, devel/test F1 and test P/R as mean ± std (%), published scores beside."""
    summary = {}
    for task in sorted({u["task"] for u in units}, key=_task_rank):
        mine = [u for u in units if u["task"] == task]
        summary[task] = {
            "seeds": [u["seed"] for u in mine],
            "devel_f1": _mean_std([u["devel"]["f1"] for u in mine]),
            "test_f1": _mean_std([u["test"]["f1"] for u in mine]),
            "test_precision": _mean_std([u["test"]["precision"] for u in mine]),
            "test_recall": _mean_std([u["test"]["recall"] for u in mine]),
            "published": {name: scores.get(task) for name, scores in PUBLISHED.items()},
        }
    return summary


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat["n"] > 1 else f"{stat['mean']:.2f}"


def markdown(units: list[dict], summary: dict) -> str:
    names = list(PUBLISHED)
    lines = [f"# NER results: `{units[0]['model']}`", "",
             "Entity-level F1 (%, seqeval strict IOB2); mean ± sample std over seeds; model selected on devel.", "",
             "| task | seeds | devel F1 | test P | test R | test F1 | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for task, s in summary.items():
        published = " | ".join(f"{s['published'][n]:.2f}" if s["published"][n] is not None else "–" for n in names)
        lines.append(f"| {task} | {','.join(map(str, s['seeds']))} | {_pm(s['devel_f1'])} | {_pm(s['test_precision'])} "
                     f"| {_pm(s['test_recall'])} | **{_pm(s['test_f1'])}** | {published} |")
    lines += ["", "## Per seed", "",
              "| task | seed | epochs | best epoch | lr | batch | train sentences | devel F1 | test P | test R | test F1 | wall (s) | device |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for u in units:
        r = u["recipe"]
        lines.append(f"| {u['task']} | {u['seed']} | {r['epochs']} | {u['best_epoch']} | {r['lr']:g} | {r['batch_size']} "
                     f"| {u['sizes']['train']} | {100 * u['devel']['f1']:.2f} | {100 * u['test']['precision']:.2f} "
                     f"| {100 * u['test']['recall']:.2f} | {100 * u['test']['f1']:.2f} | {u['wall_s']:.0f} | {r['device']} |")
    lines += ["", "## Tag schemes read (converted to IOB2 for training and scoring)", ""]
    for task in summary:
        schemes = next(u for u in units if u["task"] == task).get("schemes", {})
        lines.append(f"- {task}: " + ", ".join(f"{split} {scheme}" for split, scheme in schemes.items()))
    return "\n".join(lines) + "\n"


def bar_chart(path: Path, summary: dict, model: str) -> None:
    """Grouped bars per task: ours (mean, std as error bar) beside the published models."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = list(summary)
    series = [("ours", [summary[t]["test_f1"]["mean"] for t in tasks], [summary[t]["test_f1"]["std"] for t in tasks])]
    series += [(name, [summary[t]["published"][name] or 0.0 for t in tasks], None) for name in PUBLISHED]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(tasks) + 2), 4))
    for k, (name, values, errors) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=name)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test entity F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"NER (BLURB protocol): {Path(model).name}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_report(out_dir: str | Path, units: list[dict]) -> dict:
    """Write results.json, results.md and results.png into `out_dir`; return the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(units)
    report = {"kind": REPORT_KIND, "model": units[0]["model"], "summary": summary, "units": units}
    atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(units, summary))
    bar_chart(out / "results.png", summary, units[0]["model"])
    return report
