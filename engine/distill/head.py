"""Fit an MLM head on a teacher that has none (e.g. all-MiniLM-L6-v2), before the vocabulary swap.

Without this, every student starts with a freshly initialised head (transform dense + LayerNorm +
decoder bias), and the first hundreds of pre-training steps are spent learning that head, the same
for every init method, which drowns the difference between the methods' new embedding rows. Here
the head is fitted once, with the teacher as it is: OLD tokenizer, encoder and input embeddings
frozen, decoder weight tied to the frozen teacher embeddings; only the transform dense, the
transform LayerNorm and the decoder bias are fitted, on masked-LM over corpus text (15 % of tokens,
80/10/10). The decoder bias is the centred log unigram frequency of the corpus windows (the
closed-form fit of a bias-only model); the transform is trained by Adam on the masked positions.

Everything is a pure function of (teacher, texts, settings, seed): windows in corpus order, masks
and batch order from seeded generators, the encoder in eval mode (no dropout).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from engine.curriculum.masking import MaskingSpec, MaskingVocab, mask_batch
from engine.distill.errors import DistillError
from engine.shards.reader import PackedBatch

HEAD_KEYS = ("cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
             "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
             "cls.predictions.bias")


@dataclass
class HeadFit:
    """The fitted head (HF `cls.predictions.*` names, over the OLD vocabulary) and how it went."""

    state: dict[str, torch.Tensor]  # HEAD_KEYS → tensors
    losses: list[float]  # training MLM loss, one per step (each on its own random minibatch: noisy)
    fitted_positions_before: float  # MLM loss on ALL fitted positions, transform as initialised (bias set)
    fitted_positions_after: float  # the same positions and loss after the transform's Adam steps
    held_out_fresh: float  # held-out MLM loss of a freshly initialised head (bias 0), same masks
    held_out_fitted: float  # held-out MLM loss of the fitted head
    windows: int  # windows the bias was counted on
    positions: int  # masked positions the transform was fitted on
    held_out_windows: int  # held-out windows (the last ones read; never trained on)


def text_windows(tokenizer, texts: Iterable[str], max_tokens: int, count: int, per_text: int = 8) -> list[list[int]]:
    """Up to `count` windows of ids ([CLS] ... [SEP], ≤ max_tokens) cut from the texts in order.

    At most `per_text` windows per text, so that long documents do not fill the set alone.
    """
    windows: list[list[int]] = []
    body = max_tokens - 2
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        for start in range(0, min(len(ids), body * per_text), body):
            piece = ids[start:start + body]
            if len(piece) >= 4:
                windows.append([tokenizer.cls_token_id] + piece + [tokenizer.sep_token_id])
                if len(windows) == count:
                    return windows
    return windows


def mask_windows(ids: torch.Tensor, attention: torch.Tensor, vocab: MaskingVocab,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-training's own token masking (engine.curriculum.masking, 15 %, 80/10/10) on a padded batch
    of windows: (corrupted ids, labels with -100 where not predicted). Padding counts as segment 0,
    so it is never chosen, exactly as in packed rows."""
    batch = PackedBatch(ids, torch.ones_like(ids), attention)
    masked = mask_batch(batch, MaskingSpec(unit="token"), generator, vocab)
    return masked.input_ids, masked.labels


class TiedHead(torch.nn.Module):
    """BERT's MLM head with the decoder weight tied to a FROZEN embedding matrix (not a parameter)."""

    def __init__(self, config, embeddings: torch.Tensor):
        from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.transform.dense.weight.data.normal_(0.0, config.initializer_range)
        self.transform.dense.bias.data.zero_()
        self.transform.LayerNorm.weight.data.fill_(1.0)
        self.transform.LayerNorm.bias.data.zero_()
        self.register_buffer("embeddings", embeddings.float().clone())
        self.bias = torch.nn.Parameter(torch.zeros(embeddings.shape[0]))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ self.embeddings.T + self.bias

    def state(self) -> dict[str, torch.Tensor]:
        t = self.transform
        values = (t.dense.weight, t.dense.bias, t.LayerNorm.weight, t.LayerNorm.bias, self.bias)
        return {key: value.detach().cpu().clone() for key, value in zip(HEAD_KEYS, values)}


def fit_mlm_head(teacher, windows: list[list[int]], encoded: int, steps: int, batch_positions: int, lr: float,
                 seed: int, device: torch.device, held_out: int = 32, encode_batch: int = 32,
                 log=lambda *_: None) -> HeadFit:
    """Fit only the MLM head on the frozen teacher (see module doc) over `windows` (`text_windows`).

    The last `held_out` windows are kept out of the fit and score the fresh and the fitted head.
    Bias: the centred log unigram frequency over all other windows (closed form; trained by Adam
    on a few thousand masked positions it overfits its 30 k rows). Transform (dense + LayerNorm):
    the first `encoded` windows are masked once and run through the frozen encoder once (the
    costly part); the transform takes `steps` Adam steps on random minibatches of
    `batch_positions` of their masked positions.

    Long because encode, bias, fit and score share the frozen encoder, the masking vocabulary,
    the progress bar and the held-out states; the two inner functions are its pieces.
    """
    from tqdm import tqdm

    tokenizer, encoder = teacher.tokenizer, teacher.encoder
    if len(windows) < held_out + 1:
        raise DistillError(f"corpus gave {len(windows)} text windows; the head fit needs more than {held_out}")
    train, valid = windows[:-held_out], windows[-held_out:]
    vocab_size = len(teacher.tokens)
    special = torch.zeros(vocab_size, dtype=torch.bool)
    special[torch.tensor(sorted(set(tokenizer.all_special_ids)))] = True
    vocab = MaskingVocab(mask_id=tokenizer.mask_token_id, special_lut=special, replacement_ids=(~special).nonzero().flatten())
    pad_id = tokenizer.pad_token_id
    encoder.to(device).eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    progress = tqdm(total=min(encoded, len(train)) + len(valid), desc="mlm head: encode", unit="win", disable=None, mininterval=2.0)

    def masked_states(rows: list[list[int]], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked positions' hidden states [n, H] and their labels [n], `encode_batch` windows at a time."""
        states, labels = [], []
        for start in range(0, len(rows), encode_batch):
            part = rows[start:start + encode_batch]
            ids = torch.full((len(part), max(len(r) for r in part)), pad_id, dtype=torch.long)
            for i, r in enumerate(part):
                ids[i, :len(r)] = torch.tensor(r)
            attention = (ids != pad_id).long()
            corrupted, targets = mask_windows(ids, attention, vocab, generator)
            with torch.no_grad():
                hidden = encoder(input_ids=corrupted.to(device), attention_mask=attention.to(device)).last_hidden_state
            where = targets != -100
            states.append(hidden[where.to(device)].float())
            labels.append(targets[where].to(device))
            progress.update(len(part))
        return torch.cat(states), torch.cat(labels)

    train_states, train_labels = masked_states(train[:encoded], torch.Generator().manual_seed(seed))
    valid_states, valid_labels = masked_states(valid, torch.Generator().manual_seed(seed + 1))
    progress.close()

    torch.manual_seed(seed)
    head = TiedHead(teacher.config, teacher.word_embeddings).to(device)

    def loss_on(states: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(head(states), labels))

    def held_out_loss() -> float:
        return loss_on(valid_states, valid_labels)

    held_out_fresh = held_out_loss()
    counts = torch.bincount(torch.tensor([i for w in train for i in w[1:-1]]), minlength=vocab_size).float()
    log_freq = torch.log(counts + 0.5)
    with torch.no_grad():
        head.bias.copy_((log_freq - log_freq.mean()).to(device))

    head.bias.requires_grad_(False)
    # Whether the Adam steps fit is judged on every fitted position, not on two of the random
    # minibatches (64 positions each differ by more than the whole fit gains).
    before = loss_on(train_states, train_labels)
    optimizer = torch.optim.Adam(list(head.transform.parameters()), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    order: list[int] = []
    for _step in tqdm(range(steps), desc="mlm head: fit", disable=None, mininterval=2.0):
        if len(order) < batch_positions:
            order += torch.randperm(len(train_labels), generator=generator).tolist()
        picked, order = torch.tensor(order[:batch_positions]), order[batch_positions:]
        loss = torch.nn.functional.cross_entropy(head(train_states[picked.to(device)]), train_labels[picked.to(device)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))
    fitted = held_out_loss()
    after = loss_on(train_states, train_labels)
    log(f"mlm head: held-out loss {held_out_fresh:.3f} (fresh head) → {fitted:.3f} (fitted, {steps} steps)")
    return HeadFit(state=head.state(), losses=losses, fitted_positions_before=round(before, 4),
                   fitted_positions_after=round(after, 4), held_out_fresh=round(held_out_fresh, 4),
                   held_out_fitted=round(fitted, 4), windows=len(train), positions=len(train_labels),
                   held_out_windows=len(valid))


def load_head_state(head: TiedHead, state: dict[str, torch.Tensor], device: torch.device) -> None:
    t = head.transform
    targets = (t.dense.weight, t.dense.bias, t.LayerNorm.weight, t.LayerNorm.bias, head.bias)
    with torch.no_grad():
        for target, key in zip(targets, HEAD_KEYS):
            target.copy_(state[key].to(device))


def unigram_bias(head_bias: torch.Tensor, new_counts: torch.Tensor, shared_new: torch.Tensor,
                 shared_old: torch.Tensor, new_ids: torch.Tensor) -> torch.Tensor:
    """New rows' bias from their corpus frequency under the NEW tokenizer, on the head bias' scale.

    bias = log(count + 0.5) + c, with c the mean of (old bias − log(count + 0.5)) over the shared
    tokens that occur: the offset that best maps the new counts onto the fitted bias.
    """
    log_count = torch.log(new_counts.float() + 0.5)
    seen = new_counts[shared_new] > 0
    if not bool(seen.any()):
        return torch.full((len(new_ids),), float(head_bias.float().mean()))
    offset = (head_bias.float()[shared_old][seen] - log_count[shared_new][seen]).mean()
    return log_count[new_ids] + offset


def corpus_counts(tokenizer, texts, vocab_size: int) -> torch.Tensor:
    """Token counts of `texts` under `tokenizer` (no special tokens)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if ids:
            counts += torch.bincount(torch.tensor(ids), minlength=vocab_size)
    return counts


def new_token_bias(head_bias: torch.Tensor, pieces: list[list[int] | None], rule: str) -> torch.Tensor:
    """Decoder bias for each new token from the teacher's (fitted) bias over the OLD vocabulary.

    `pieces_mean` / `pieces_min`: the mean / the lowest bias of the token's old pieces (its fvt
    spelling); `mean`: the mean bias of all old tokens. A token the old vocabulary cannot spell
    gets the mean bias. (`unigram` needs corpus counts: `unigram_bias`.)
    """
    bias = head_bias.float()
    fallback = bias.mean()
    if rule not in ("pieces_mean", "pieces_min", "mean"):
        raise DistillError(f"new_token_bias: unknown rule {rule!r}")
    rows = []
    for token_pieces in pieces:
        if rule == "mean" or not token_pieces:
            rows.append(fallback)
        else:
            values = bias[token_pieces]
            rows.append(values.min() if rule == "pieces_min" else values.mean())
    return torch.stack(rows) if rows else torch.zeros(0)
