"""Rows for the new tokens: random, mean, fvt, contextual and distill.

Every function returns a float32 tensor [len(new_ids), hidden] in the order of `new_ids`.

- `random`: BERT's own init, N(0, initializer_range), from a seeded generator.
- `mean`: the mean of all teacher input embeddings, the same row for every new token.
- `fvt` (fast vocabulary transfer): the mean of the teacher embeddings of the token's pieces under
  the OLD WordPiece vocabulary. A whole-word token is split as a word (`nephrotoxicity` →
  `ne ##ph ##rot ##ox ##icity`); a `##x` piece is split as the continuation of a word, so every
  piece, the first included, is looked up with the `##` prefix (`##ximab` → `##xi ##ma ##b`).
  A token the old vocabulary cannot spell (a character it lacks) gets the mean row (reported).
- `contextual`: mean over contexts of the teacher's hidden states at `layer`, pooled over the old
  pieces covering the token. Hidden states live in another space than input rows (layer 0 is
  already word + position + type embeddings through LayerNorm; deeper layers drift further), so
  by default the vectors are calibrated: per dimension, shifted and scaled so that their mean and
  standard deviation over all new tokens equal those of the teacher's input embedding matrix.
  Tokens without a context fall back to `fvt`.
- `distill`: start from `fvt`; train only the new rows (Adam, everything else frozen) so that the
  student's last hidden state over the token (new tokenizer) matches the teacher's last hidden
  state over the same characters (old tokenizer), MSE, for a few epochs over the contexts; with
  `mlm_weight` > 0 also so that the (fitted) MLM head predicts the token where it is masked in
  those contexts (the new rows' decoder bias is then trained too).
"""
from __future__ import annotations

import torch

from engine.distill.teacher import Encoded, mean_pool, pad_batch


def random_rows(count: int, hidden: int, std: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, hidden, generator=generator) * std


def mean_rows(count: int, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    return teacher_embeddings.float().mean(0, keepdim=True).expand(count, -1).clone()


def old_pieces(token: str, old_vocab: dict[str, int], normalize=lambda s: s, max_chars: int = 100) -> list[int] | None:
    """Greedy longest-match WordPiece of `token` over the OLD vocabulary; None if it cannot be spelled.

    A `##` token is spelled as a word continuation: its first piece is looked up with `##` too.
    """
    continuation = token.startswith("##") and len(token) > 2
    text = normalize(token[2:] if continuation else token)
    if not text or len(text) > max_chars:
        return None
    pieces, start = [], 0
    while start < len(text):
        end = len(text)
        while end > start:
            piece = text[start:end]
            if start > 0 or continuation:
                piece = "##" + piece
            if piece in old_vocab:
                pieces.append(old_vocab[piece])
                break
            end -= 1
        if end == start:
            return None
        start = end
    return pieces


def fvt_rows(new_tokens: list[str], new_ids: list[int], old_vocab: dict[str, int],
             teacher_embeddings: torch.Tensor, normalize=lambda s: s) -> tuple[torch.Tensor, list[int]]:
    """(rows, ids of tokens the old vocabulary could not spell: they got the mean row)."""
    embeddings = teacher_embeddings.float()
    fallback = embeddings.mean(0)
    rows, unspelled = [], []
    for token_id in new_ids:
        pieces = old_pieces(new_tokens[token_id], old_vocab, normalize)
        if pieces is None:
            unspelled.append(token_id)
            rows.append(fallback)
        else:
            rows.append(embeddings[pieces].mean(0))
    hidden = embeddings.shape[1]
    return (torch.stack(rows) if rows else torch.zeros(0, hidden)), unspelled


def contextual_rows(new_ids: list[int], context_owner: list[int], pooled: torch.Tensor, fallback: torch.Tensor,
                    teacher_embeddings: torch.Tensor | None) -> tuple[torch.Tensor, list[int]]:
    """Mean of `pooled` rows per owner token; tokens without a row keep `fallback` (returned as ids).

    `context_owner[i]` is the new id whose context produced `pooled[i]`. With `teacher_embeddings`
    the means are calibrated to the embedding matrix's per-dimension mean and std (see module doc).
    """
    position = {token_id: row for row, token_id in enumerate(new_ids)}
    sums = torch.zeros(len(new_ids), pooled.shape[1] if pooled.numel() else fallback.shape[1])
    counts = torch.zeros(len(new_ids))
    if len(context_owner):
        index = torch.tensor([position[t] for t in context_owner], dtype=torch.long)
        sums.index_add_(0, index, pooled.float())
        counts.index_add_(0, index, torch.ones(len(context_owner)))
    has = counts > 0
    means = sums[has] / counts[has].unsqueeze(1)
    if teacher_embeddings is not None and len(means) > 1:
        means = calibrate(means, teacher_embeddings.float())
    rows = fallback.clone()
    rows[has] = means
    fell_back = [t for t, h in zip(new_ids, has.tolist()) if not h]
    return rows, fell_back


def calibrate(vectors: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-dimension affine map giving `vectors` the mean and std of `target`'s rows."""
    mean, std = vectors.mean(0), vectors.std(0).clamp_min(1e-6)
    return (vectors - mean) / std * target.std(0) + target.mean(0)


def distill_rows(student: torch.nn.Module, new_ids: list[int], inputs: list[Encoded], targets: torch.Tensor,
                 pad_id: int, mask_id: int, epochs: int, lr: float, batch_size: int, seed: int,
                 device: torch.device, mlm_weight: float = 0.0,
                 progress_desc: str = "distill") -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
    """Train the rows of `new_ids` (and, with the MLM term, their decoder bias) → (rows, bias, loss per epoch).

    `student` is a transformers BertForMaskedLM with the NEW vocabulary (new rows already at their
    starting values, decoder tied to the embeddings) whose other weights are the teacher's; it is
    only read. `inputs` are the contexts under the new tokenizer (pool = the token's pieces) and
    `targets` the teacher's pooled last hidden states for the same contexts.

    Loss = MSE(student's pooled last hidden state, teacher's) — the rows as INPUTS — plus, when
    `mlm_weight` > 0, `mlm_weight` × the cross-entropy of predicting the token's pieces from a copy
    of the context where they are [MASK] — the rows as OUTPUTS: the decoder is tied, so a row that
    only reads well as input is still a poor prediction target, and at the start of pre-training the
    new tokens' targets are near-uniform (docs/distill_init.md). The bias is returned only then.
    """
    from tqdm import tqdm

    student.to(device).eval()  # eval: no dropout, the targets are deterministic
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    encoder, transform = student.bert, student.cls.predictions.transform
    base = student.bert.embeddings.word_embeddings.weight.detach().float().to(device)
    base_bias = student.cls.predictions.bias.detach().float().to(device)
    row_ids = torch.tensor(new_ids, dtype=torch.long, device=device)
    trainable = torch.nn.Parameter(base[row_ids].clone())
    trainable_bias = torch.nn.Parameter(base_bias[row_ids].clone())
    use_mlm = mlm_weight > 0
    optimizer = torch.optim.Adam([trainable, trainable_bias] if use_mlm else [trainable], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _epoch in range(epochs):
        total, seen = 0.0, 0
        for picked in tqdm(length_bucketed_batches([len(e.ids) for e in inputs], batch_size, generator),
                           desc=progress_desc, disable=None, mininterval=2.0):
            ids, mask, pool = (t.to(device) for t in pad_batch([inputs[i] for i in picked], pad_id))
            table = base.index_put((row_ids,), trainable)
            states = encoder(inputs_embeds=torch.nn.functional.embedding(ids, table),
                             attention_mask=mask).last_hidden_state
            loss = torch.nn.functional.mse_loss(mean_pool(states, pool), targets[picked].to(device))
            if use_mlm:
                masked = pool > 0
                masked_ids = ids.masked_fill(masked, mask_id)
                states = encoder(inputs_embeds=torch.nn.functional.embedding(masked_ids, table),
                                 attention_mask=mask).last_hidden_state
                logits = transform(states[masked]) @ table.T + base_bias.index_put((row_ids,), trainable_bias)
                loss = loss + mlm_weight * torch.nn.functional.cross_entropy(logits, ids[masked])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(picked)
            seen += len(picked)
        losses.append(total / max(seen, 1))
    return trainable.detach().cpu(), (trainable_bias.detach().cpu() if use_mlm else None), losses


def length_bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator,
                            bucket_batches: int = 32) -> list[list[int]]:
    """Shuffled batches of similar length (less padding): shuffle, sort within buckets, shuffle batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = batch_size * bucket_batches
    for start in range(0, len(order), span):
        bucket = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
