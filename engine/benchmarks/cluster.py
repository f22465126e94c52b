"""Cluster benchmark: the real trainer at several world sizes x ZeRO stages x micro-batch sizes.

    python engine/benchmark.py cluster --out bench/cluster.json                      # this node, CPU or GPUs
    python engine/benchmark.py cluster --world-sizes 8,16,32 --launcher srun --preset bert-base \\
        --shards runs/shards --out bench/cluster.json                                # inside slurm/benchmark.sbatch

Each cell runs `engine/pretrain.py` for `--steps` steps (the first is warm-up, not timed) with
DeepSpeed's `wall_clock_breakdown` on, and reads the trainer's own last metrics record: tokens/s,
TFLOP/s, MFU (GPU), peak memory of the largest rank, and the per-step breakdown measured inside the
trainer: data wait (the loop blocked on the batch stream), forward, backward, gradient reduction
(DeepSpeed's bwd_allreduce timer; reduction overlapped with backward counts as backward) and
optimizer step. Scaling efficiency = tokens/s / (world size / smallest world size x tokens/s of
the smallest world size), same stage and micro batch. Writes the JSON record, a markdown table
next to it (.md) and a plot (.png).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.record import write_record
from engine.training.setup import free_port

ROOT = Path(__file__).resolve().parents[2]
BREAKDOWN = ("data_wait", "forward", "backward", "communication", "optimizer")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="bench/cluster.json")
    parser.add_argument("--world-sizes", default="1,2", help="comma list of rank counts")
    parser.add_argument("--zero-stages", default="0,1,2,3", help="comma list of ZeRO stages")
    parser.add_argument("--micro-batches", default="8", help="comma list of micro-batch sizes per rank")
    parser.add_argument("--preset", default="tiny", help="engine.bert preset")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="steps per cell; the first is warm-up")
    parser.add_argument("--shards", default=None, help="shard folder (default: demo corpus shards built here)")
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                        help="default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--launcher", default="local", choices=["local", "srun"],
                        help="local: deepspeed launcher on this node; srun: ranks across the SLURM allocation")


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sys.exit(f"error: --{what} must be comma-separated integers, got {text!r}")
    if not values:
        sys.exit(f"error: --{what} is empty")
    return values


def _demo_shards(root: Path, seq_len: int) -> Path:
    from engine.corpus.demo import demo_documents
    from engine.shards import ShardOptions, build_shards, train_vocab

    docs = demo_documents(400, seed=0)
    build_shards([(f"demo{i}", d) for i, d in enumerate(docs)], root / "shards", train_vocab(docs, 1024),
                 ShardOptions(seq_lens=[seq_len], valid_fraction=0.05))
    return root / "shards"


def _cell_config(work: Path, shards: Path, args, stage: int, micro: int, precision: str) -> Path:
    ds = work / f"zero{stage}.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": stage}, "steps_per_print": 10**9,
                              "wall_clock_breakdown": True}))
    config = work / f"zero{stage}_micro{micro}.toml"
    config.write_text(f"""
steps = {args.steps}
seq_len = {args.seq_len}
seed = 1
[model]
preset = "{args.preset}"
[data]
shards = "{shards}"
[curriculum]
preset = "bioptimus"
[batch]
micro = {micro}
grad_accum = 1
[deepspeed]
config = "{ds}"
precision = "{precision}"
[checkpoint]
interval = {10**9}
[logging]
interval = {args.steps}
progress_bar = false
tensorboard = false
[eval]
interval = 0
""")
    return config


def _launch(args, world: int, config: Path, out_dir: Path) -> list[str]:
    python = sys.executable
    train = ["engine/pretrain.py", "--config", str(config), f"--out_dir={out_dir}"]
    if args.launcher == "srun":
        return ["srun", f"--ntasks={world}", "--kill-on-bad-exit=1", "bash", "-c",
                'RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS exec "$@"', "rank-env",
                python, *train]
    if world == 1:
        return [python, *train]
    return [python, "-m", "deepspeed.launcher.runner", "--master_port", str(free_port()), "--num_gpus", str(world),
            *train]


def run_cell(args, work: Path, shards: Path, world: int, stage: int, micro: int, precision: str) -> dict:
    config = _cell_config(work, shards, args, stage, micro, precision)
    out_dir = work / f"w{world}_z{stage}_m{micro}"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.launcher == "srun":
        env.update(MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), MASTER_PORT=str(free_port()))
    result = subprocess.run(_launch(args, world, config, out_dir), cwd=ROOT, env=env, capture_output=True, text=True)
    cell = {"world_size": world, "zero_stage": stage, "micro_batch": micro, "precision": precision}
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        return {**cell, "error": " | ".join(tail)}
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "train"][-1]
    keep = ("tokens_per_s", "samples_per_s", "tflops", "mfu", "peak_memory_gib_max_rank", "data_wait_share")
    cell.update({k: last.get(k) for k in keep})
    cell["step_seconds"] = {k: last.get(f"step_{k}_s") for k in BREAKDOWN}
    return cell


def add_scaling(cells: list[dict]) -> None:
    """Efficiency against the smallest world size of the same (stage, micro batch)."""
    for cell in cells:
        same = [c for c in cells if c["zero_stage"] == cell["zero_stage"] and c["micro_batch"] == cell["micro_batch"]
                and c.get("tokens_per_s")]
        if not same or not cell.get("tokens_per_s"):
            cell["scaling_efficiency"] = None
            continue
        base = min(same, key=lambda c: c["world_size"])
        ideal = base["tokens_per_s"] * cell["world_size"] / base["world_size"]
        cell["scaling_efficiency"] = cell["tokens_per_s"] / ideal


def markdown_table(cells: list[dict]) -> str:
    def fmt(value, spec):
        return "—" if value is None else format(value, spec)
    lines = ["| ranks | ZeRO | micro | tokens/s | TFLOP/s | MFU | peak GiB (max rank) | scaling eff. | data wait "
             "| fwd ms | bwd ms | comm ms | optim ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        if "error" in c:
            lines.append(f"| {c['world_size']} | {c['zero_stage']} | {c['micro_batch']} | failed: {c['error'][:80]} |")
            continue
        ms = {k: (None if v is None else v * 1000) for k, v in c["step_seconds"].items()}
        lines.append(f"| {c['world_size']} | {c['zero_stage']} | {c['micro_batch']} | {fmt(c['tokens_per_s'], '.0f')} "
                     f"| {fmt(c['tflops'], '.4f')} | {fmt(c['mfu'], '.1%')} | {fmt(c['peak_memory_gib_max_rank'], '.2f')} "
                     f"| {fmt(c['scaling_efficiency'], '.2f')} | {fmt(c['data_wait_share'], '.1%')} "
                     f"| {fmt(ms['forward'], '.1f')} | {fmt(ms['backward'], '.1f')} | {fmt(ms['communication'], '.1f')} "
                     f"| {fmt(ms['optimizer'], '.1f')} |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cells if c.get("tokens_per_s")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in sorted({c["zero_stage"] for c in ok}):
        for micro in sorted({c["micro_batch"] for c in ok}):
            row = sorted((c for c in ok if c["zero_stage"] == stage and c["micro_batch"] == micro),
                         key=lambda c: c["world_size"])
            left.plot([c["world_size"] for c in row], [c["tokens_per_s"] for c in row], marker="o",
                      label=f"ZeRO {stage}, micro {micro}")
    left.set_xlabel("ranks")
    left.set_ylabel("tokens/s")
    left.legend(fontsize=8)
    labels = [f"{c['world_size']}r z{c['zero_stage']} m{c['micro_batch']}" for c in ok]
    bottom = [0.0] * len(ok)
    for key in BREAKDOWN:
        values = [(c["step_seconds"].get(key) or 0.0) * 1000 for c in ok]
        right.bar(labels, values, bottom=bottom, label=key)
        bottom = [b + v for b, v in zip(bottom, values)]
    right.set_ylabel("ms per step")
    right.tick_params(axis="x", rotation=60, labelsize=7)
    right.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run(args) -> dict:
    import torch

    worlds = _ints(args.world_sizes, "world-sizes")
    stages = _ints(args.zero_stages, "zero-stages")
    micros = _ints(args.micro_batches, "micro-batches")
    if any(s not in (0, 1, 2, 3) for s in stages):
        sys.exit(f"error: --zero-stages must be among 0-3, got {args.zero_stages}")
    if args.steps < 2:
        sys.exit("error: --steps must be >= 2 (the first step is warm-up)")
    if args.shards is not None and not Path(args.shards).is_dir():
        sys.exit(f"error: --shards: no shard folder at {args.shards}")
    precision = args.precision or ("bf16" if torch.cuda.is_available() else "fp32")
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="cluster_bench_") as tmp:
        work = Path(tmp)
        shards = Path(args.shards).resolve() if args.shards else _demo_shards(work, args.seq_len)
        cells = []
        for micro in micros:
            for stage in stages:
                for world in worlds:
                    cell = run_cell(args, work, shards, world, stage, micro, precision)
                    print(json.dumps(cell), flush=True)
                    cells.append(cell)
    add_scaling(cells)
    table = markdown_table(cells)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    tmp_md = md.with_name(f".{md.name}.tmp")
    tmp_md.write_text(table)
    os.replace(tmp_md, md)
    plot(cells, png)
    print(table)
    config = {k: getattr(args, k) for k in ("world_sizes", "zero_stages", "micro_batches", "preset", "seq_len",
                                             "steps", "shards", "launcher")}
    config["precision"] = precision
    return write_record(out, "cluster", {"cells": cells, "table": str(md), "plot": str(png)}, config)
