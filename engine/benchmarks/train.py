"""Training throughput: our DeepSpeed loop vs HF Trainer (run_mlm line_by_line / group_texts); GPU MFU.

    python engine/benchmark.py train --out bench/train.json                      # CPU comparison
    python engine/benchmark.py train --gpu-mfu --out bench/train_mfu.json        # BERT-base, bf16, 1 GPU

CPU comparison: the same documents (the PMC corpus under ../shared/data when present, else the
embedded demo corpus), the same model shape (4 layers, hidden 256, 4 heads, the full 30,522
bert-base-uncased vocabulary), the same torch threads, the same 16 sequences of 128 per step and the
same number of steps. Figures are non-pad tokens per second over the timed steps (warm-up steps
excluded). HF baselines follow `run_mlm.py`: `line_by_line` tokenises every non-empty line
(truncated to 128, padded per batch by the collator); `group_texts` concatenates the tokenised
lines and cuts 128-token blocks. Both use `DataCollatorForLanguageModeling(mlm_probability=0.15)`.
The engine side is the real trainer (`engine.training.trainer.Trainer`, one process, ZeRO 0, fp32) on
packed shards built from the same documents, flat 15 % token masking (80/10/10).

GPU MFU (`--gpu-mfu`): BERT-base at seq 128, bf16, one GPU, packed shards of the demo corpus (or
the PMC corpus when present) with the bert-base-uncased vocabulary; attention dropout 0 so the
flash varlen kernel can run (hidden dropout stays 0.1); run four times: eager and with
`model.compile` (each layer torch.compile'd), each with the reference ops and with the fused kernels
(`model.kernels=auto`); `mfu` is the fastest one's. `mfu` = model matmul FLOPs (`engine.bert.flops`)
per second over the device's dense bf16 peak, warm-up steps excluded. `--gpu-mfu --tiny` runs the
same four modes with the tiny model on any device (the GPU check's dry run; CPU figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from engine.record import write_record
from engine.io import TEACHER_INSTALL, shared_data_dir, teacher_folder

ROOT = Path(__file__).resolve().parents[2]
SHARED = shared_data_dir()
PMC = SHARED / "corpus" / "pmc_rct_fulltext"
BERT_VOCAB = SHARED / "vocab" / "bert-base-uncased-vocab.txt"
SMALL_BERT = dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench/train.json", help="JSON record to write")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="folder of .txt documents (default: PMC if present, else the demo corpus)")
    parser.add_argument("--docs", type=int, default=300, help="documents taken from the corpus")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per system")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--micro", type=int, default=16, help="sequences per step (CPU comparison)")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--gpu-mfu", action="store_true", help="BERT-base bf16 MFU on one GPU instead")
    parser.add_argument("--gpu-micro", type=int, default=128, help="--gpu-mfu: sequences per micro-step")
    parser.add_argument("--tiny", action="store_true",
                        help="--gpu-mfu: tiny model, any device (dry run of the GPU check)")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temp dir)")


def vocab_file() -> Path:
    """bert-base-uncased's vocab.txt: the shared copy, else the MiniLM teacher's identical one."""
    if BERT_VOCAB.is_file():
        return BERT_VOCAB
    teacher = teacher_folder()
    if teacher is None:
        raise SystemExit(f"error: neither {BERT_VOCAB} nor the MiniLM teacher ({TEACHER_INSTALL}) is present")
    return teacher / "vocab.txt"


def load_documents(corpus: Path | None, docs: int) -> tuple[list[tuple[str, str]], str]:
    """(id, text) pairs and a label naming where they came from."""
    if corpus is None and PMC.is_dir():
        corpus = PMC
    if corpus is not None:
        files = sorted(Path(corpus).glob("*.txt"))[:docs]
        return [(f.stem, f.read_text(encoding="utf-8")) for f in files], f"{corpus} (first {len(files)} files)"
    from engine.corpus.demo import demo_documents
    documents = [(f"demo{i}", d) for i, d in enumerate(demo_documents(docs, seed=0))]
    return documents, f"engine.corpus.demo ({docs} documents)"


def build_bench_shards(documents, out: Path, seq_len: int) -> Path:
    from engine.shards import ShardOptions, build_shards, read_vocab_file
    build_shards(documents, out, read_vocab_file(vocab_file()), ShardOptions(seq_lens=[seq_len], valid_fraction=0.0))
    return out


def aggregate(metrics: Path, after_step: int) -> dict:
    """Tokens/s, TFLOP/s and MFU over the train records after `after_step` (time-weighted)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    tokens = seconds = flops = 0.0
    previous = None
    for record in train:
        if previous is not None and record["step"] > after_step and "tokens_per_s" in record:
            step_tokens = record["consumed_tokens"] - previous["consumed_tokens"]
            step_seconds = step_tokens / record["tokens_per_s"]
            tokens += step_tokens
            seconds += step_seconds
            flops += record["tflops"] * 1e12 * step_seconds
        previous = record
    out = {"tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12, "timed_seconds": seconds}
    mfu = [r["mfu"] for r in train if r["step"] > after_step and "mfu" in r]
    if mfu:
        peak = train[-1]["tflops"] / train[-1]["mfu"] * 1e12
        out["mfu"] = flops / seconds / peak
    return out


def run_engine(shards: Path, work: Path, steps: int, warmup: int, micro: int, seq_len: int, model: dict,
               ds_config: str, precision: str, compile_layers: bool = False, kernels: str = "reference") -> dict:
    """The real trainer, one process; returns figures aggregated over the timed steps.

    The trainer logs every `warmup` steps (a log is a host sync, which would stall a GPU if done every
    step); the first `warmup` steps are left out, so `steps` is rounded up to a multiple of `warmup`."""
    from engine.config import load_config
    from engine.training.config import PretrainConfig
    from engine.training.setup import dist_from_env, init_distributed, prepare_run
    from engine.training.trainer import Trainer

    warmup = max(warmup, 1)
    steps = -(-steps // warmup) * warmup
    model = dict(model)
    overrides = [f"--out_dir={work}", f"--steps={warmup + steps}", f"--seq_len={seq_len}", f"--data.shards={shards}",
                 "--curriculum.preset=flat", f"--batch.micro={micro}", "--batch.grad_accum=1",
                 f"--deepspeed.config={ROOT / 'ds_configs' / ds_config}", f"--deepspeed.precision={precision}",
                 "--eval.interval=0", f"--checkpoint.interval={10 * (warmup + steps)}", f"--logging.interval={warmup}",
                 "--logging.progress_bar=false", "--logging.tensorboard=false", "--optim.warmup_steps=0",
                 f"--model.preset={model.pop('preset', 'bert-base')}", f"--model.overrides={json.dumps(model)}",
                 f"--model.compile={str(compile_layers).lower()}", f"--model.kernels={kernels}"]
    config = load_config(PretrainConfig, None, overrides)
    dist = dist_from_env()
    plan = prepare_run(config, dist, resume=None)
    init_distributed(dist)
    try:
        trainer = Trainer(plan)
        try:
            trainer.train()
        finally:
            trainer.close()
    finally:
        plan.stream.close()
    return aggregate(work / "metrics.jsonl", after_step=warmup)


class _TokenCounter:
    """Wraps the HF collator and counts non-pad tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.counts: list[int] = []
        self.masked: list[int] = []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.counts.append(int(batch["attention_mask"].sum()))
        self.masked.append(int((batch["labels"] != -100).sum()))
        return batch


def hf_baseline(documents, mode: str, steps: int, warmup: int, micro: int, seq_len: int, work: Path,
                tokenizer_dir: Path) -> dict:
    """HF Trainer + DataCollatorForLanguageModeling, the way `run_mlm.py` prepares data (including its
    `return_special_tokens_mask=True`, so the collator never masks [CLS]/[SEP]/[PAD])."""
    from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling,
                              Trainer, TrainerCallback, TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # the shard folder's: same tokens as the engine
    lines = [line for _, text in documents for line in text.splitlines() if line.strip()]
    if mode == "line_by_line":
        encoded = tokenizer(lines, truncation=True, max_length=seq_len, return_special_tokens_mask=True)
        examples = [{"input_ids": ids, "special_tokens_mask": special}
                    for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"])]
    else:
        encoded = tokenizer(lines, return_special_tokens_mask=True)
        flat = [t for ids in encoded["input_ids"] for t in ids]
        flat_special = [t for special in encoded["special_tokens_mask"] for t in special]
        blocks = len(flat) // seq_len
        examples = [{"input_ids": flat[i * seq_len:(i + 1) * seq_len],
                     "special_tokens_mask": flat_special[i * seq_len:(i + 1) * seq_len]} for i in range(blocks)]
    needed = (steps + warmup) * micro
    examples = (examples * (needed // max(len(examples), 1) + 1))[:needed]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=SMALL_BERT["hidden_size"],
                        num_hidden_layers=SMALL_BERT["num_layers"], num_attention_heads=SMALL_BERT["num_heads"],
                        intermediate_size=SMALL_BERT["intermediate_size"], max_position_embeddings=512)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    counter = _TokenCounter(DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(work / f"hf_{mode}"), per_device_train_batch_size=micro,
                             max_steps=steps + warmup, learning_rate=1e-4, save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, logging_strategy="no",
                             seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=counter,
                      callbacks=[StepTimer()])
    trainer.train()
    # Batch i is collated before step i ends; steps warmup+1 .. end are timed.
    timed_tokens = sum(counter.counts[warmup + 1: warmup + steps])
    seconds = times[warmup + steps - 1] - times[warmup]
    padded = micro * seq_len
    if not all(counter.masked):
        raise RuntimeError(f"HF {mode}: a batch without masked tokens; the baseline would not be doing MLM")
    share = sum(counter.counts) / (len(counter.counts) * padded)
    return {"tokens_per_s": timed_tokens / seconds, "mean_non_pad_share": share}


def run_cpu_comparison(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    documents, source = load_documents(args.corpus, args.docs)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        shards = build_bench_shards(documents, work / "shards", args.seq_len)
        # HF first: the engine joins a (one-process) process group that Trainer would otherwise pick up.
        line = hf_baseline(documents, "line_by_line", args.steps, args.warmup, args.micro, args.seq_len, work, shards)
        group = hf_baseline(documents, "group_texts", args.steps, args.warmup, args.micro, args.seq_len, work, shards)
        engine = run_engine(shards, work / "engine", args.steps, args.warmup, args.micro, args.seq_len,
                            {"preset": "bert-base", **SMALL_BERT}, "zero0_fp32_cpu.json", "fp32")
    figures = {
        "engine_tokens_per_s": engine["tokens_per_s"],
        "hf_line_by_line_tokens_per_s": line["tokens_per_s"],
        "hf_group_texts_tokens_per_s": group["tokens_per_s"],
        "speedup_vs_line_by_line": engine["tokens_per_s"] / line["tokens_per_s"],
        "speedup_vs_group_texts": engine["tokens_per_s"] / group["tokens_per_s"],
        "hf_line_by_line_non_pad_share": line["mean_non_pad_share"],
    }
    config = {"documents": source, "model": {"vocab_size": 30522, **SMALL_BERT}, "seq_len": args.seq_len,
              "sequences_per_step": args.micro, "timed_steps": args.steps, "warmup_steps": args.warmup,
              "threads": torch.get_num_threads(), "precision": "fp32", "engine": "ZeRO 0, flat 15% token masking",
              "hf": "Trainer + DataCollatorForLanguageModeling(mlm_probability=0.15), run_mlm data modes"}
    write_record(args.out, "train", figures, config)
    return figures


MFU_MODES = {  # mode -> (model.kernels, model.compile)
    "eager": ("reference", False),
    "compiled": ("reference", True),
    "fused": ("auto", False),
    "fused_compiled": ("auto", True),
}


def run_gpu_mfu(args) -> dict:
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("error: --gpu-mfu needs a CUDA device (--tiny runs the same modes anywhere)")
    model_name = "tiny" if args.tiny else "bert-base"
    ds_config, precision = ("zero1_bf16.json", "bf16") if torch.cuda.is_available() else ("zero0_fp32_cpu.json", "fp32")
    documents, source = load_documents(args.corpus, 200 if args.tiny else max(args.docs, 1500))
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        work = Path(tmp)
        shards = build_bench_shards(documents, work / "shards", args.seq_len)
        runs = {}
        for mode, (kernels, compiled) in MFU_MODES.items():  # same shards, same steps
            runs[mode] = run_engine(shards, work / f"engine-{mode}", args.steps, args.warmup, args.gpu_micro,
                                    args.seq_len, {"preset": model_name, "attention_dropout": 0.0},
                                    ds_config, precision, compile_layers=compiled, kernels=kernels)
    best = max(runs, key=lambda mode: runs[mode]["tokens_per_s"])
    figures = {"mfu": runs[best].get("mfu"), "mfu_mode": best, "tflops": runs[best]["tflops"],
               "tokens_per_s": runs[best]["tokens_per_s"],
               **{f"{key}_{mode}": runs[mode].get(key) for mode in runs for key in ("mfu", "tflops", "tokens_per_s")}}
    config = {"documents": source, "model": f"{model_name} (attention_dropout 0)", "seq_len": args.seq_len,
              "micro_batch": args.gpu_micro, "timed_steps": args.steps, "warmup_steps": args.warmup,
              "precision": precision, "zero": ds_config,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "modes": "eager = reference ops as dispatched; compiled = model.compile (each layer torch.compile'd); "
                       "fused = model.kernels=auto (Triton LayerNorm, bias+GELU, chunked MLM loss)",
              "dry_run": args.tiny}
    write_record(args.out, "train_gpu_mfu", figures, config)
    return figures


def run(args) -> dict:
    return run_gpu_mfu(args) if args.gpu_mfu else run_cpu_comparison(args)
