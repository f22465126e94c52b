"""The whole distillation-init step: inputs checked → contexts → rows → student folder + report.

Nothing appears at `out` until the end: the run works in `.<out name>.partial/` beside it (its
`cache/` keeps the teacher's context encodings so a stopped run resumes) and renames the finished
model folder into place.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Iterator, Literal

import torch

from engine.config import to_dict
from engine.distill import contexts as ctx
from engine.distill import head as heads
from engine.distill import methods, report as reporting, student as students, teacher as teachers, vocab as vocabs
from engine.distill.errors import DistillError
from engine.io import atomic_path, atomic_write_text, resolve_device, swap_in_folder

Method = Literal["random", "mean", "fvt", "contextual", "distill"]
METHODS = ("random", "mean", "fvt", "contextual", "distill")
FIT_HEAD = ("auto", "yes", "no")
NEW_TOKEN_BIAS = ("unigram", "pieces_min", "pieces_mean", "mean")
HEAD_HELD_OUT = 32  # corpus windows kept out of the head fit to score it
DEFAULT_PROBES = ["nephrotoxicity", "hepatotoxicity", "tachycardia", "cisplatin", "rituximab", "apoptosis",
                  "##ximab", "##umab", "##azole", "##ectomy", "##platin", "thrombocytopenia"]


@dataclass
class DistillConfig:
    teacher: str = ""  # HF folder of the general-domain teacher (config.json, model.safetensors, tokenizer)
    vocab: str = ""  # the new vocabulary: vocab.txt, or a tokenizer folder (vocab.txt / tokenizer.json)
    corpus: str = ""  # text corpus (txt folder, .jsonl, PubMed .xml; see engine.corpus.readers)
    out: str = ""  # output HF folder; must not exist or be empty
    method: Method = "fvt"  # how new rows are made (engine.distill.methods; docs/distill_init.md: why fvt)
    corpus_format: str = "auto"  # reader format: auto, txt, jsonl, pubmed-xml
    k: int = 8  # contexts per new token
    max_context_chars: int = 300  # a context is cut to this many characters around the token
    max_tokens: int = 128  # model input length cap (pieces, [CLS]/[SEP] included)
    layer: int = 3  # teacher layer for `contextual` (0 = embedding output); measured, docs/distill_init.md
    calibrate: bool = True  # map contextual vectors to the embedding matrix's per-dimension mean/std
    batch_size: int = 64  # contexts per teacher/student batch
    distill_epochs: int = 2  # passes over the contexts for `distill`
    distill_lr: float = 1e-3  # Adam learning rate for the new rows in `distill`
    distill_mlm_weight: float = 0.0  # `distill`: weight of the masked-token term (rows as prediction targets)
    fit_head: Literal[FIT_HEAD] = "auto"  # fit an MLM head on the frozen teacher first: auto (when it has none), yes, no
    head_steps: int = 150  # Adam steps of the head transform fit
    head_batch_positions: int = 1024  # masked positions per head-fit step
    head_lr: float = 5e-3  # Adam learning rate of the head transform fit
    head_windows: int = 512  # corpus windows (max_tokens each) run through the teacher for the transform fit
    head_bias_windows: int = 4000  # corpus windows (tokenized only) whose unigram counts give the head bias
    new_token_bias: Literal[NEW_TOKEN_BIAS] = "pieces_min"  # decoder bias of new rows: pieces_min, unigram (corpus counts), pieces_mean, mean
    bias_docs: int = 500  # corpus documents counted (new tokenizer) for new_token_bias=unigram
    cache_dir: str = ""  # teacher-encoding and fitted-head cache; "" = .<out>.partial/cache (dropped at the end)
    seed: int = 0  # seeds random rows, the MLM head (fit and init) and the distill shuffle
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))  # tokens whose neighbours the report shows
    neighbours: int = 5  # neighbours listed per probe and method

    def __post_init__(self):
        for name in ("teacher", "vocab", "corpus", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name}: a path is required")
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} is not one of {list(METHODS)}")
        for name in ("k", "max_context_chars", "batch_size", "neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens: must be ≥ 8, got {self.max_tokens}")
        if self.layer < 0:
            raise ValueError(f"layer: must be ≥ 0, got {self.layer}")
        if self.distill_epochs < 0 or self.distill_lr <= 0 or self.distill_mlm_weight < 0:
            raise ValueError("distill_epochs and distill_mlm_weight must be ≥ 0 and distill_lr > 0")
        if self.fit_head not in FIT_HEAD:
            raise ValueError(f"fit_head: {self.fit_head!r} is not one of {list(FIT_HEAD)}")
        if self.new_token_bias not in NEW_TOKEN_BIAS:
            raise ValueError(f"new_token_bias: {self.new_token_bias!r} is not one of {list(NEW_TOKEN_BIAS)}")
        for name in ("head_steps", "head_batch_positions", "head_windows", "head_bias_windows", "bias_docs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.head_lr <= 0:
            raise ValueError(f"head_lr: must be > 0, got {self.head_lr}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")


def iter_corpus(path: str, fmt: str) -> Iterator[tuple[str, str]]:
    """(doc id, text) from a text corpus (engine.corpus.readers) or a shard folder; errors → DistillError.

    A shard folder (has manifest.json) is read back as text: each packed segment of the train and
    valid rows at the shortest sequence length is decoded with the shards' own tokenizer.
    """
    from engine.corpus.readers import CorpusError, iter_documents

    try:
        if (Path(path) / "manifest.json").is_file():
            yield from _iter_shard_texts(Path(path))
        else:
            yield from iter_documents(path, fmt=fmt)
    except CorpusError as exc:
        raise DistillError(str(exc)) from None


def _iter_shard_texts(root: Path, rows_per_batch: int = 1024) -> Iterator[tuple[str, str]]:
    import numpy as np

    from engine.shards import PackedShards, ShardError, load_tokenizer

    try:
        tokenizer = load_tokenizer(root)
        seq_len = min(int(length) for length in json.loads((root / "manifest.json").read_text())["sets"])
        for split in ("train", "valid"):
            shards = PackedShards(root, split, seq_len, verify_checksums=False)
            for start in range(0, len(shards), rows_per_batch):
                batch = shards.get_batch(np.arange(start, min(start + rows_per_batch, len(shards))))
                pieces, names = [], []
                for r in range(len(batch.ids)):
                    for segment in range(1, int(batch.segment_ids[r].max(initial=0)) + 1):
                        pieces.append(batch.ids[r][batch.segment_ids[r] == segment].tolist())
                        names.append(f"{split}:{start + r}:{segment}")
                yield from zip(names, tokenizer.decode_batch(pieces, skip_special_tokens=True))
    except (ShardError, ValueError, KeyError, OSError) as exc:
        raise DistillError(f"{root}: cannot read shards ({exc})") from None


def check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DistillError(f"output folder is not empty: {out}")


def run(config: DistillConfig, log=print) -> dict:
    """Run distillation init end to end; returns the report (also written into the out folder).

    Long because it is the list of stages read top to bottom (load and align, contexts, head fit,
    rows, save, report), each timed by `lap`; every stage is already its own function."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 3)
        clock = now

    out = Path(config.out)
    check_output(out)
    device = resolve_device(config.device, DistillError)
    teacher = teachers.load_teacher(config.teacher)
    new_tokens = vocabs.read_vocab(config.vocab)
    alignment = vocabs.align(teacher.tokens, new_tokens, config.teacher, config.vocab)
    new_special = vocabs.special_ids(new_tokens, config.vocab)
    if config.method in ("contextual", "distill") and config.layer > teacher.config.num_hidden_layers:
        raise DistillError(f"layer {config.layer} asked for but the teacher has {teacher.config.num_hidden_layers} layers")
    if config.method == "distill" and config.distill_mlm_weight > 0 and not teacher.mlm_head and config.fit_head == "no":
        raise DistillError("distill_mlm_weight > 0 needs an MLM head: the teacher has none and fit_head is 'no'")
    lowercase = vocabs.is_uncased(new_tokens)
    tokenizer = vocabs.make_tokenizer(new_tokens, lowercase)
    log(f"vocabulary: {alignment.counts()} (lower-case: {lowercase}); device {device}")
    lap("load_and_align")

    stats = ctx.FinderStats()
    found = ctx.find_contexts(iter_corpus(config.corpus, config.corpus_format), tokenizer.backend_tokenizer,
                              alignment.new_ids.tolist(), config.k, lowercase=lowercase,
                              max_chars=config.max_context_chars, stats=stats)
    if stats.raw_tokens == 0:
        raise DistillError(f"corpus is empty: {config.corpus}")
    coverage = {**ctx.coverage(found), "documents": stats.documents, "characters": stats.characters}
    log(f"contexts: {coverage['with_context']}/{coverage['targets']} new tokens have ≥1 context")
    lap("find_contexts")

    partial = out.parent / f".{out.name}.partial"
    cache_dir = Path(config.cache_dir) if config.cache_dir else partial / "cache"
    model_dir = partial / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    head_report = None
    if config.fit_head == "yes" or (config.fit_head == "auto" and not teacher.mlm_head):
        fit = fitted_head(config, teacher, cache_dir, device, log)
        teacher = replace(teacher, mlm_head=fit["state"])
        head_report = {k: v for k, v in fit.items() if k != "state"}
        lap("fit_mlm_head")
    bias = new_rows_bias(config, teacher, new_tokens, alignment, tokenizer)
    rows_by_method, fallbacks, losses, bias = compute_rows(config, teacher, new_tokens, alignment, new_special,
                                                           tokenizer, found, cache_dir, device, lap, bias)
    rows = rows_by_method[config.method]

    embeddings = students.assemble_embeddings(teacher, alignment, rows, len(new_tokens))
    model = students.build_student(teacher, alignment, embeddings, new_special["pad"], config.seed, bias)
    students.save_student(model, model_dir)
    vocabs.save_tokenizer(tokenizer, lowercase, model_dir)
    lap("save")

    report = {
        "method": config.method, "teacher": str(config.teacher), "vocab": str(config.vocab),
        "corpus": str(config.corpus), "vocabulary": alignment.counts(), "contexts": coverage,
        "fallbacks": fallbacks, "distill_losses": losses, "mlm_head_fit": head_report, "seconds": seconds,
        "probes": probe_neighbours(config, teacher, new_tokens, alignment, rows_by_method),
        "config": to_dict(config),
    }
    reporting.write_report(model_dir, report)
    swap_in_folder(model_dir, out)
    shutil.rmtree(partial)
    return report


def fitted_head(config: DistillConfig, teacher: teachers.Teacher, cache_dir: Path, device: torch.device, log) -> dict:
    """The MLM head fitted on the frozen teacher (engine.distill.head), cached by teacher, windows and settings."""
    from safetensors.torch import load_file, save_file

    texts = (text for _doc_id, text in iter_corpus(config.corpus, config.corpus_format))
    windows = heads.text_windows(teacher.tokenizer, texts, config.max_tokens,
                                 max(config.head_windows, config.head_bias_windows) + HEAD_HELD_OUT)
    settings = [teacher.fingerprint, config.head_windows, config.head_steps, config.head_batch_positions,
                config.head_lr, config.seed, windows]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:24]
    path = cache_dir / f"mlm-head-{key}.safetensors"
    if path.is_file():
        state = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        log(f"mlm head: reused {path}")
        return {"state": state, **meta}
    fit = heads.fit_mlm_head(teacher, windows, config.head_windows, config.head_steps, config.head_batch_positions,
                             config.head_lr, config.seed, device, held_out=max(1, min(HEAD_HELD_OUT, len(windows) // 4)),
                             log=log)
    meta = {"steps": config.head_steps, "bias_windows": fit.windows, "positions": fit.positions,
            "held_out_windows": fit.held_out_windows,
            "held_out_loss_fresh_head": fit.held_out_fresh, "held_out_loss_fitted_head": fit.held_out_fitted,
            "train_loss_first": fit.losses[0], "train_loss_last": fit.losses[-1],
            "fitted_positions_loss_before": fit.fitted_positions_before,
            "fitted_positions_loss_after": fit.fitted_positions_after}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    with atomic_path(path) as tmp:  # last: its presence means the .json beside it is complete
        save_file(fit.state, str(tmp))
    return {"state": fit.state, **meta}


def new_rows_bias(config: DistillConfig, teacher: teachers.Teacher, new_tokens: list[str],
                  alignment: vocabs.Alignment, tokenizer) -> torch.Tensor | None:
    """Decoder bias of the new rows from the teacher's (fitted) head bias; None when there is no head."""
    bias = teacher.mlm_head.get("cls.predictions.bias", teacher.mlm_head.get("cls.predictions.decoder.bias"))
    if bias is None:
        return None
    if config.new_token_bias == "unigram":
        texts = (text for _doc_id, text in islice(iter_corpus(config.corpus, config.corpus_format), config.bias_docs))
        counts = heads.corpus_counts(tokenizer, texts, len(new_tokens))
        return heads.unigram_bias(bias, counts, torch.as_tensor(alignment.shared_new),
                                  torch.as_tensor(alignment.shared_old), torch.as_tensor(alignment.new_ids))
    old_vocab = {t: i for i, t in enumerate(teacher.tokens)}
    normalizer = teacher.tokenizer.backend_tokenizer.normalizer
    normalize = normalizer.normalize_str if normalizer is not None else (lambda s: s)
    pieces = [methods.old_pieces(new_tokens[i], old_vocab, normalize) for i in alignment.new_ids.tolist()]
    return heads.new_token_bias(bias, pieces, config.new_token_bias)


def compute_rows(config: DistillConfig, teacher: teachers.Teacher, new_tokens: list[str], alignment: vocabs.Alignment,
                 new_special: dict[str, int], tokenizer, found: dict, cache_dir: Path, device: torch.device,
                 lap, bias: torch.Tensor | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, int], list[float], torch.Tensor | None]:
    """Rows of every method this run can afford: random, mean, fvt always; contextual/distill when asked.

    Also returns the new rows' decoder bias: `bias` as given, or as `distill` trained it (MLM term).
    """
    new_ids = alignment.new_ids.tolist()
    hidden = teacher.config.hidden_size
    old_vocab = {t: i for i, t in enumerate(teacher.tokens)}
    normalizer = teacher.tokenizer.backend_tokenizer.normalizer
    normalize = normalizer.normalize_str if normalizer is not None else (lambda s: s)
    rows = {
        "random": methods.random_rows(len(new_ids), hidden, teacher.config.initializer_range, config.seed),
        "mean": methods.mean_rows(len(new_ids), teacher.word_embeddings),
    }
    rows["fvt"], unspelled = methods.fvt_rows(new_tokens, new_ids, old_vocab, teacher.word_embeddings, normalize)
    fallbacks = {"fvt_unspelled_mean_row": len(unspelled)}
    lap("fvt")
    losses: list[float] = []
    if config.method not in ("contextual", "distill"):
        return rows, fallbacks, losses, bias

    owners, contexts = [], []
    for token_id, context in ctx.iter_sentences(found):
        owners.append(token_id)
        contexts.append(context)
    old_inputs = teachers.encode_contexts(teacher.tokenizer, contexts, config.max_tokens)
    new_inputs = teachers.encode_contexts(tokenizer, contexts, config.max_tokens)
    usable = [i for i in range(len(contexts)) if old_inputs[i] is not None and new_inputs[i] is not None]
    last = teacher.config.num_hidden_layers
    layers = sorted({config.layer, last} if config.method == "distill" else {config.layer})
    tag = f"{teacher.fingerprint}:{config.max_tokens}"
    pooled = teachers.pooled_states(teacher.encoder, [old_inputs[i] for i in usable], layers,
                                    teacher.tokenizer.pad_token_id, config.batch_size, device, cache_dir, tag)
    lap("teacher_encode")
    used_owners = [owners[i] for i in usable]
    rows["contextual"], no_context = methods.contextual_rows(
        new_ids, used_owners, pooled[config.layer], rows["fvt"],
        teacher.word_embeddings if config.calibrate else None)
    fallbacks["contextual_no_context_fvt"] = len(no_context)
    fallbacks["contexts_dropped_truncated"] = len(contexts) - len(usable)
    lap("contextual")
    if config.method == "distill":
        table = students.assemble_embeddings(teacher, alignment, rows["fvt"], len(new_tokens))
        student = students.build_student(teacher, alignment, table, new_special["pad"], config.seed, bias)
        rows["distill"], trained_bias, losses = methods.distill_rows(
            student, new_ids, [new_inputs[i] for i in usable], pooled[last], new_special["pad"], new_special["mask"],
            config.distill_epochs, config.distill_lr, config.batch_size, config.seed, device, config.distill_mlm_weight)
        if trained_bias is not None:
            bias = trained_bias
        lap("distill")
    return rows, fallbacks, losses, bias


def probe_neighbours(config: DistillConfig, teacher: teachers.Teacher, new_tokens: list[str],
                     alignment: vocabs.Alignment, rows_by_method: dict[str, torch.Tensor]) -> dict:
    """probe → method → nearest old tokens; a probe that is not a new token says why instead."""
    index = {t: i for i, t in enumerate(new_tokens)}
    position = {token_id: row for row, token_id in enumerate(alignment.new_ids.tolist())}
    shared = set(alignment.shared_new.tolist())
    probes: dict = {}
    for probe in config.probes:
        if probe not in index:
            probes[probe] = "not in the new vocabulary"
        elif index[probe] in shared:
            probes[probe] = "shared with the teacher vocabulary (row copied)"
        else:
            row = position[index[probe]]
            probes[probe] = {method: reporting.nearest_old_tokens(rows[row:row + 1], teacher.word_embeddings,
                                                                  teacher.tokens, config.neighbours)[0]
                             for method, rows in rows_by_method.items()}
    return probes


def config_from_args(values: dict) -> DistillConfig:
    """DistillConfig from a flat dict (CLI); field errors become DistillError."""
    from engine.config import ConfigError, from_dict

    try:
        return from_dict(DistillConfig, {k: v for k, v in values.items() if v is not None})
    except ConfigError as exc:
        raise DistillError(str(exc)) from None

