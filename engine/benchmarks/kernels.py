"""Fused kernels vs their torch references: bandwidth, attention time, MLM-loss memory, BERT step.

    python engine/benchmark.py kernels --out bench/kernels.json          # GPU figures (CPU: memory only)
    python engine/benchmark.py kernels --tiny --out /tmp/kernels.json    # dry run: every path, tiny shapes

Figures (each compares against the real alternative in the same run):
- `layer_norm_bw_fraction` (CUDA): residual + dropout + LayerNorm forward + backward, bytes that must
  move (forward reads x, residual, writes y and the pre-norm sum; backward reads dy and the sum,
  writes both input gradients) per second, over the measured device-to-device copy bandwidth
  (bytes read + written per second). BERT-base rows: 16,384 tokens x 768, bf16.
- `attention_vs_sdpa` (CUDA): what `dispatch.attention_varlen` runs under `auto` for BERT training
  (dropout 0.1: the Triton varlen kernel) on a packed batch, forward + backward time over padded
  torch SDPA on the same sequences (`attention_vs_sdpa_no_dropout` likewise at dropout 0, where
  torch's flash varlen kernel runs).
- `mlm_loss_peak_mem_ratio`: peak memory of the chunked MLM loss forward + backward over the
  whole-logits reference (BERT-base head: 30,528 x 768; 2,458 masked rows = 15 % of 128 x 128).
  CUDA: `max_memory_allocated` above the inputs; CPU: each in a fresh process, peak resident set
  (`ru_maxrss`) above the resident set once the inputs exist, fp32.
- `step_speedup_fused` (CUDA): BERT-base forward + backward on a packed bf16 batch, reference
  over `auto` (fused) time.
Keys that cannot be measured on this machine are listed under `absent` with the reason.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from engine.record import write_record

BERT_ROWS, BERT_HIDDEN, BERT_VOCAB = 16384, 768, 30528
MASKED_ROWS = 2458


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench/kernels.json", help="JSON record to write")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes on any device (CPU: Triton's interpreter), to check the script runs")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per measurement")
    parser.add_argument("--mlm-loss-peak", nargs=4, metavar=("IMPL", "ROWS", "VOCAB", "HIDDEN"), default=None,
                        help=argparse.SUPPRESS)  # child-process mode of the CPU memory measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Mean seconds per call of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps


def copy_bandwidth(device: torch.device, numel: int, reps: int) -> float:
    """Device copy bandwidth, bytes read + written per second."""
    src = torch.empty(numel, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = time_per_call(lambda: dst.copy_(src), device, reps)
    return 2 * src.numel() * src.element_size() / seconds


def layer_norm_figures(device, dtype, rows, width, reps) -> dict:
    from kernels.layer_norm import residual_layer_norm, residual_layer_norm_ref

    x = torch.randn(rows, width, device=device, dtype=dtype, requires_grad=True)
    res = torch.randn_like(x, requires_grad=True)
    weight = torch.ones(width, device=device, dtype=dtype, requires_grad=True)
    bias = torch.zeros_like(weight, requires_grad=True)
    dy = torch.randn_like(x)

    def step(fn):
        return lambda: torch.autograd.grad(fn(x, res, weight, bias, 1e-12, 0.1), (x, res, weight, bias), dy)

    fused = time_per_call(step(residual_layer_norm), device, reps)
    reference = time_per_call(step(residual_layer_norm_ref), device, reps)
    moved = 8 * x.numel() * x.element_size()
    bandwidth = moved / fused
    copy = copy_bandwidth(device, max(rows * width, 1 << 20), reps)
    return {"layer_norm_bw_fraction": bandwidth / copy, "layer_norm_fused_gb_per_s": bandwidth / 1e9,
            "layer_norm_copy_gb_per_s": copy / 1e9, "layer_norm_fused_ms": fused * 1e3,
            "layer_norm_reference_ms": reference * 1e3, "layer_norm_speedup": reference / fused}


def attention_figures(device, dtype, lengths, heads, head_dim, reps) -> dict:
    import torch.nn.functional as F

    from kernels import dispatch

    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(total, heads, head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    width = max(lengths)
    padded = [torch.zeros(len(lengths), heads, width, head_dim, device=device, dtype=dtype, requires_grad=True)
              for _ in range(3)]
    key_mask = (torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None])
    key_mask = key_mask[:, None, None, :]

    def run_varlen(p):
        def fn():
            out = dispatch.attention_varlen(q, k, v, cu, width, dropout_p=p)
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        return fn

    def run_sdpa(p):
        def fn():
            out = F.scaled_dot_product_attention(*padded, attn_mask=key_mask, dropout_p=p)
            torch.autograd.grad(out, padded, torch.ones_like(out))
        return fn

    figures = {}
    before = dispatch.get_backend()
    dispatch.set_backend("auto")
    try:
        for p, key in ((0.1, "attention_vs_sdpa"), (0.0, "attention_vs_sdpa_no_dropout")):
            ours, sdpa = time_per_call(run_varlen(p), device, reps), time_per_call(run_sdpa(p), device, reps)
            figures[key] = ours / sdpa
            figures[f"{key}_ms"] = {"dispatch_auto": ours * 1e3, "sdpa_padded": sdpa * 1e3}
    finally:
        dispatch.set_backend(before)
    return figures


def _mlm_inputs(rows, vocab, hidden, device, dtype):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(rows, hidden, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).to(device, dtype).requires_grad_()
    b = torch.zeros(vocab).to(device, dtype).requires_grad_()
    t = torch.randint(0, vocab - 1, (rows,), generator=g).to(device)
    return h, w, b, t


def _mlm_step(impl: str, h, w, b, t, vocab):
    from kernels.mlm_loss import chunked_mlm_loss, mlm_loss_ref

    loss = chunked_mlm_loss(h, w, b, t, vocab)[0] if impl == "chunked" else mlm_loss_ref(h, w, b, t, vocab)[0]
    return torch.autograd.grad(loss, (h, w, b))


def mlm_peak_child(impl: str, rows: int, vocab: int, hidden: int) -> None:
    """Child process: print the peak RSS growth (bytes) of one forward + backward above the inputs."""
    inputs = _mlm_inputs(rows, vocab, hidden, torch.device("cpu"), torch.float32)
    with open("/proc/self/statm") as fh:
        before = int(fh.read().split()[1]) * resource.getpagesize()
    grads = _mlm_step(impl, *inputs, vocab)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak - before, "grad_norm": float(sum(g.float().norm() for g in grads))}))


def mlm_memory_figures(device, dtype, rows, vocab, hidden) -> dict:
    peaks = {}
    if device.type == "cuda":
        for impl in ("reference", "chunked"):
            inputs = _mlm_inputs(rows, vocab, hidden, device, dtype)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            grads = _mlm_step(impl, *inputs, vocab)
            torch.cuda.synchronize()
            peaks[impl] = torch.cuda.max_memory_allocated() - base
            del grads, inputs
    else:
        for impl in ("reference", "chunked"):
            cmd = [sys.executable, "-m", "engine.benchmark", "kernels", "--mlm-loss-peak", impl,
                   str(rows), str(vocab), str(hidden)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            peaks[impl] = json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]
    return {"mlm_loss_peak_mem_ratio": peaks["chunked"] / peaks["reference"],
            "mlm_loss_peak_mib": {k: v / 2**20 for k, v in peaks.items()}}


def step_figures(device, dtype, preset_name, rows, seq_len, reps) -> dict:
    from engine.bert import BertForMaskedLM, preset
    from kernels import dispatch

    torch.manual_seed(0)
    model = BertForMaskedLM(preset(preset_name)).to(device, dtype).train()
    g = torch.Generator().manual_seed(0)
    segment_ids = torch.ones(rows, seq_len, dtype=torch.long)
    segment_ids[:, seq_len // 2:] = 2  # two segments per row, as packed shards give
    ids = torch.randint(1, model.config.vocab_size, (rows, seq_len), generator=g)
    labels = torch.where(torch.rand(rows, seq_len, generator=g) < 0.15, ids, torch.full_like(ids, -100))
    batch = {k: t.to(device) for k, t in (("input_ids", ids), ("segment_ids", segment_ids), ("labels", labels))}

    def step():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    before = dispatch.get_backend()
    times = {}
    try:
        for backend in ("reference", "auto"):
            dispatch.set_backend(backend)
            times[backend] = time_per_call(step, device, reps)
    finally:
        dispatch.set_backend(before)
    return {"step_speedup_fused": times["reference"] / times["auto"],
            "step_ms": {"reference": times["reference"] * 1e3, "fused": times["auto"] * 1e3}}


def run(args) -> dict:
    if args.mlm_loss_peak:
        impl, rows, vocab, hidden = args.mlm_loss_peak
        mlm_peak_child(impl, int(rows), int(vocab), int(hidden))
        return {}
    from kernels.triton_support import triton_runs_on

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    triton_ok = triton_runs_on(torch.empty(0, device=device))
    if args.tiny:
        shapes = dict(rows=64, width=96, lengths=[5, 17, 9], heads=2, head_dim=32, masked=37, vocab=256,
                      hidden=32, preset="tiny", step_rows=2, seq_len=32, reps=2)
    else:
        shapes = dict(rows=BERT_ROWS, width=BERT_HIDDEN, lengths=[128] * 96 + [64] * 64, heads=12, head_dim=64,
                      masked=MASKED_ROWS, vocab=BERT_VOCAB, hidden=BERT_HIDDEN, preset="bert-base", step_rows=128,
                      seq_len=128, reps=args.reps)
    reps = shapes["reps"]
    figures: dict = {}
    absent: dict = {}
    gpu_reason = "needs a CUDA device (GPU figure)"
    timed_here = gpu or args.tiny
    if timed_here and triton_ok:
        figures.update(layer_norm_figures(device, dtype, shapes["rows"], shapes["width"], reps))
    else:
        absent["layer_norm_bw_fraction"] = gpu_reason if not gpu else "triton is not installed"
    if timed_here:
        figures.update(attention_figures(device, dtype, shapes["lengths"], shapes["heads"], shapes["head_dim"], reps))
        figures.update(step_figures(device, dtype, shapes["preset"], shapes["step_rows"], shapes["seq_len"], reps))
    else:
        absent["attention_vs_sdpa"] = absent["step_speedup_fused"] = gpu_reason
    figures.update(mlm_memory_figures(device, dtype, shapes["masked"], shapes["vocab"], shapes["hidden"]))
    figures["absent"] = absent
    config = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "dtype": str(dtype), "tiny": args.tiny,
              "triton_runs": triton_ok, "shapes": shapes,
              "note": "tiny = dry run of the script, figures meaningless" if args.tiny else "full shapes"}
    write_record(args.out, "kernels", figures, config)
    return figures
