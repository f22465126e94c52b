"""The run report (report.json + report.md): counts, coverage, head fit, fallbacks, timings, probe neighbours."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def nearest_old_tokens(rows: torch.Tensor, teacher_embeddings: torch.Tensor, old_tokens: list[str],
                       top: int) -> list[list[tuple[str, float]]]:
    """For each row, the `top` old-vocabulary tokens of highest cosine similarity (no [..] tokens)."""
    keep = torch.tensor([not (t.startswith("[") and t.endswith("]")) for t in old_tokens])
    table = torch.nn.functional.normalize(teacher_embeddings.float(), dim=1)
    queries = torch.nn.functional.normalize(rows.float(), dim=1)
    scores = queries @ table.T
    scores[:, ~keep] = -2.0
    values, indices = scores.topk(min(top, int(keep.sum())), dim=1)
    return [[(old_tokens[i], round(float(v), 4)) for v, i in zip(vs, ids)] for vs, ids in zip(values, indices)]


def write_report(folder: Path, report: dict) -> None:
    (folder / "distill_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (folder / "distill_report.md").write_text(render_markdown(report), encoding="utf-8")


def render_markdown(report: dict) -> str:
    counts, cov = report["vocabulary"], report["contexts"]
    lines = [f"# Distillation init: `{report['method']}`", "",
             f"Teacher `{report['teacher']}` → vocabulary `{report['vocab']}`, corpus `{report['corpus']}`.", "",
             "| shared rows copied | new rows initialised | teacher rows dropped |", "|---|---|---|",
             f"| {counts['shared']} | {counts['new']} | {counts['dropped']} |", "",
             f"Contexts (K={report['config']['k']}): {cov['with_context']} of {cov['targets']} new tokens have ≥ 1 "
             f"({100 * cov['share_with_context']:.1f} %), {cov['mean_contexts']:.2f} per token on average "
             f"({cov.get('documents', 0)} documents read).", ""]
    if report.get("fallbacks"):
        lines += ["Fallbacks: " + ", ".join(f"{k}: {v}" for k, v in report["fallbacks"].items()), ""]
    if report.get("mlm_head_fit"):
        fit = report["mlm_head_fit"]
        lines += [f"MLM head fitted on the frozen teacher (it has none): held-out MLM loss "
                  f"{fit['held_out_loss_fresh_head']:.3f} with a fresh head → {fit['held_out_loss_fitted_head']:.3f} "
                  f"({fit['steps']} steps, {fit['positions']} masked positions); the student inherits it.", ""]
    if report.get("distill_losses"):
        lines += ["Distill MSE per epoch: " + ", ".join(f"{x:.5f}" for x in report["distill_losses"]), ""]
    lines += ["| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in report["seconds"].items()]
    lines += ["", "## Nearest old-vocabulary neighbours of probe tokens (cosine)", ""]
    for probe, by_method in report["probes"].items():
        if isinstance(by_method, str):
            lines.append(f"- `{probe}`: {by_method}")
            continue
        lines.append(f"- `{probe}`")
        for method, neighbours in by_method.items():
            lines.append(f"  - {method}: " + ", ".join(f"{tok} ({score:.2f})" for tok, score in neighbours))
    return "\n".join(lines) + "\n"
