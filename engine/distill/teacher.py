"""The teacher: load an HF BERT folder safely, and run it in batches with an on-disk cache.

Only `model.safetensors` is read (no pickles from user paths). A teacher may be a `BertModel`
(e.g. all-MiniLM-L6-v2: no MLM head) or a `BertForMaskedLM` (`bert.` prefix, `cls.predictions.*`
head, which the student then inherits).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.distill.contexts import Context
from engine.distill.errors import DistillError
from engine.distill.vocab import read_vocab
from engine.io import atomic_path, has_tokenizer


@dataclass
class Teacher:
    encoder: torch.nn.Module  # transformers.BertModel in eval mode
    config: object  # transformers.BertConfig of the teacher
    tokens: list[str]  # old vocabulary in id order
    tokenizer: object  # transformers fast tokenizer over the old vocabulary
    word_embeddings: torch.Tensor  # [old_vocab, hidden] (a detached copy)
    mlm_head: dict[str, torch.Tensor]  # `cls.predictions.*` tensors when the teacher has a head, else {}
    fingerprint: str  # identifies the weights (cache keys)


def load_teacher(folder: str | Path) -> Teacher:
    """Load and check a teacher folder: config.json, model.safetensors, tokenizer (vocab.txt/tokenizer.json)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(folder)
    if not folder.is_dir():
        raise DistillError(f"teacher folder not found: {folder}")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        other = [p.name for p in folder.glob("*.bin")]
        hint = f" (found {other[0]}: convert it to safetensors; pickles are not loaded)" if other else ""
        raise DistillError(f"{folder}: teacher has no model.safetensors{hint}")
    if not (folder / "config.json").is_file():
        raise DistillError(f"{folder}: teacher has no config.json")
    if not has_tokenizer(folder):
        raise DistillError(f"{folder}: teacher has no tokenizer (tokenizer.json or vocab.txt)")
    try:
        config_dict = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DistillError(f"{folder / 'config.json'}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if config_dict.get("model_type") != "bert":
        raise DistillError(f"{folder / 'config.json'}: model_type is {config_dict.get('model_type')!r}, need 'bert'")
    config = BertConfig.from_dict(config_dict)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise DistillError(f"{weights}: cannot read weights ({exc})") from None
    encoder_state = {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith("cls.")}
    head = {k: v for k, v in state.items() if k.startswith("cls.predictions.")}
    encoder = BertModel(config, add_pooling_layer=any(k.startswith("pooler.") for k in encoder_state))
    missing, unexpected = encoder.load_state_dict(encoder_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise DistillError(f"{weights}: weights do not match config.json "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    encoder.eval()
    tokens = read_vocab(folder)
    if len(tokens) != config.vocab_size:
        raise DistillError(f"{folder}: tokenizer has {len(tokens)} tokens but config.json says {config.vocab_size}")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    digest.update(json.dumps(config_dict, sort_keys=True).encode())
    return Teacher(encoder=encoder, config=config, tokens=tokens, tokenizer=tokenizer,
                   word_embeddings=encoder.embeddings.word_embeddings.weight.detach().clone(),
                   mlm_head=head, fingerprint=digest.hexdigest()[:16])


@dataclass
class Encoded:
    """One model input: token ids (with [CLS]/[SEP]) and the positions to mean-pool (the target span)."""

    ids: list[int]
    pool: list[int]


def encode_contexts(tokenizer, contexts: list[Context], max_tokens: int) -> list[Encoded | None]:
    """Tokenize each context; pool = the pieces overlapping the token's character span.

    None where the span falls outside the first `max_tokens` pieces (the context is then unused).
    """
    if not contexts:
        return []
    encodings = tokenizer([c.text for c in contexts], add_special_tokens=True, truncation=True,
                          max_length=max_tokens, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)
    out: list[Encoded | None] = []
    for context, ids, offsets in zip(contexts, encodings["input_ids"], encodings["offset_mapping"]):
        pool = [i for i, ((s, e), tok) in enumerate(zip(offsets, ids))
                if tok not in special and s < context.end and e > context.start and e > s]
        out.append(Encoded(ids=list(ids), pool=pool) if pool else None)
    return out


def pooled_states(encoder: torch.nn.Module, inputs: list[Encoded], layers: list[int], pad_id: int,
                  batch_size: int, device: torch.device, cache_dir: Path | None = None, cache_tag: str = "",
                  desc: str = "teacher", chunk_size: int = 4096) -> dict[int, torch.Tensor]:
    """layer → [len(inputs), hidden]: hidden states at `layer` mean-pooled over each input's `pool`.

    Layer 0 is the embedding-layer output (word + position + type, LayerNorm), layer L the output
    of transformer block L. Work is split in chunks; each chunk's result is saved under
    `cache_dir`, keyed by a hash of `cache_tag` (teacher/weights identity), the layers and the
    chunk's inputs, so a stopped run resumes where it was and a changed input is recomputed.
    """
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    results = {layer: [] for layer in layers}
    progress = tqdm(total=len(inputs), desc=desc, unit="ctx", disable=None, mininterval=2.0)
    for chunk_start in range(0, len(inputs), chunk_size):
        chunk = inputs[chunk_start:chunk_start + chunk_size]
        cached = None
        if cache_dir is not None:
            key = hashlib.sha256(json.dumps([cache_tag, layers, [(e.ids, e.pool) for e in chunk]]).encode()).hexdigest()
            path = cache_dir / f"{desc}-{key[:24]}.safetensors"
            if path.is_file():
                cached = load_file(str(path))
        if cached is None:
            cached = _run_chunk(encoder, chunk, layers, pad_id, batch_size, device, progress)
            if cache_dir is not None:
                with atomic_path(path) as tmp:
                    save_file(cached, str(tmp))
        else:
            progress.update(len(chunk))
        for layer in layers:
            results[layer].append(cached[f"layer{layer}"])
    progress.close()
    hidden = encoder.config.hidden_size
    return {layer: torch.cat(parts) if parts else torch.zeros(0, hidden) for layer, parts in results.items()}


@torch.no_grad()
def _run_chunk(encoder, chunk: list[Encoded], layers: list[int], pad_id: int, batch_size: int,
               device: torch.device, progress) -> dict[str, torch.Tensor]:
    """Forward a chunk in length-sorted batches (less padding); results back in input order."""
    encoder.to(device)
    hidden = encoder.config.hidden_size
    out = {f"layer{layer}": torch.zeros(len(chunk), hidden) for layer in layers}
    order = sorted(range(len(chunk)), key=lambda i: (len(chunk[i].ids), i))
    for start in range(0, len(order), batch_size):
        batch = [chunk[i] for i in order[start:start + batch_size]]
        ids, mask, pool = pad_batch(batch, pad_id)
        states = encoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                         output_hidden_states=True).hidden_states
        for layer in layers:
            pooled = mean_pool(states[layer].float(), pool.to(device)).cpu()
            for row, index in enumerate(order[start:start + batch_size]):
                out[f"layer{layer}"][index] = pooled[row]
        progress.update(len(batch))
    return out


def pad_batch(batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [B, L], attention mask [B, L], pooling weights [B, L] (1/n on each pooled position)."""
    length = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.long)
    pool = torch.zeros(len(batch), length)
    for row, e in enumerate(batch):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        mask[row, :len(e.ids)] = 1
        pool[row, e.pool] = 1.0 / len(e.pool)
    return ids, mask, pool


def mean_pool(states: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """[B, L, H] states, [B, L] weights summing to 1 per row → [B, H]."""
    return torch.einsum("blh,bl->bh", states, pool)
