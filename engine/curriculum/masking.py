"""Vectorised MLM masking of one packed batch: token or whole-word unit, 80/10/10 corruption.

Masks are drawn on the fly for every batch, so every epoch sees fresh masks. Each ROW's mask is a
pure function of the row's tokens and a 64-bit row key (`row_keys`): the training stream keys a row
by (seed, phase, global position of the row in the run), never by rank, micro-step or a random
stream that a restart would reset. So a resumed run re-draws exactly the masks the uninterrupted run
drew, and a run on 1, 2 or 4 ranks with the same global batch masks every row the same way. The
random numbers are a counter-based hash (splitmix64) of (row key, column): no generator state.

How words are chosen (the part that matters for whole-word masking): each row's target is
`rate × maskable tokens` TOKENS, as in BERT's `create_masked_lm_predictions`, not a share of words.
Every unit (token, or word = a word-start token plus its `##` pieces) gets a random 8-bit key;
units are taken in key order until their token count reaches the target. Key order is found
without a sort (a sort of 256 × 128 keys costs ~1 ms on one core, more than the whole budget): a
per-row histogram of unit lengths over the 256 key values gives the threshold key; units below it
are taken, and each unit AT it (one or two per row) is taken with the probability that makes the
expected count exactly the target. Rows land within a few tokens of their target (mean miss under
one token), and the rate over a batch matches the target to within ~0.1 %. Longer words are
neither favoured nor avoided.

Special tokens and padding are never chosen; a random replacement is drawn from `MaskingVocab.
replacement_ids`, which excludes every special id (and `[unused*]` entries when the vocabulary
file is given).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100  # label value at positions that are not predicted (torch cross-entropy default)
KEY_BINS = 256  # distinct random key values per unit; ties at the threshold key are rare (~1 unit)
_MASK64 = (1 << 64) - 1
LANES = 2  # independent hash streams per position: 0 = choice and corruption, 1 = random replacement


@dataclass(frozen=True)
class MaskingSpec:
    """What to mask in one batch: the unit, the token rate, and how chosen tokens are corrupted."""

    unit: Literal["token", "word"] = "token"  # token: pieces chosen independently; word: whole words
    rate: float = 0.15  # target share of maskable tokens that are predicted, in (0, 1)
    mask_prob: float = 0.8  # share of chosen tokens replaced by [MASK]
    random_prob: float = 0.1  # share of chosen tokens replaced by a random non-special token
    keep_prob: float = 0.1  # share of chosen tokens left unchanged (still predicted)

    def __post_init__(self):
        if self.unit not in ("token", "word"):
            raise ValueError(f"unit must be 'token' or 'word', got {self.unit!r}")
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"rate must be in (0, 1), got {self.rate!r}")
        for name in ("mask_prob", "random_prob", "keep_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        total = self.mask_prob + self.random_prob + self.keep_prob
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"mask_prob + random_prob + keep_prob must sum to 1, got {total:.6g}")


@dataclass(frozen=True)
class MaskingVocab:
    """The ids masking needs: [MASK], which ids are never chosen, and the replacement pool."""

    mask_id: int  # id of [MASK]
    special_lut: torch.Tensor  # bool [vocab_size]: True for ids never chosen for prediction
    replacement_ids: torch.Tensor  # int64 [n]: ids a random replacement is drawn from

    @property
    def vocab_size(self) -> int:
        return int(self.special_lut.numel())


def make_masking_vocab(vocab_size: int, special_ids: dict[str, int], vocab_file: str | Path | None = None,
                       extra_excluded: Sequence[int] = ()) -> MaskingVocab:
    """Build the masking vocabulary from the shard facts (`PackedShards.vocab_size/.special_ids`).

    `special_ids` must hold "mask" and should hold every special (pad/unk/cls/sep/mask); they are
    never chosen and never drawn as replacements. With `vocab_file` (one token per line, as
    `vocab.txt`), every `[...]` entry such as `[unused7]` is also excluded from replacements.
    """
    if "mask" not in special_ids:
        raise ValueError(f"special_ids must include 'mask', got {sorted(special_ids)}")
    lut = torch.zeros(vocab_size, dtype=torch.bool)
    for name, idx in special_ids.items():
        if not 0 <= int(idx) < vocab_size:
            raise ValueError(f"special id {name}={idx} is outside the vocabulary [0, {vocab_size})")
        lut[int(idx)] = True
    excluded = lut.clone()
    for idx in extra_excluded:
        excluded[int(idx)] = True
    if vocab_file is not None:
        lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        for idx, token in enumerate(lines[:vocab_size]):
            if token.startswith("[") and token.endswith("]"):
                excluded[idx] = True
    replacement = torch.nonzero(~excluded).flatten()
    if replacement.numel() == 0:
        raise ValueError("no token id is left for random replacement after excluding specials")
    return MaskingVocab(mask_id=int(special_ids["mask"]), special_lut=lut, replacement_ids=replacement)


class MaskedBatch(NamedTuple):
    """One model-ready micro-batch: int64 tensors [B, L]; `labels` is -100 where nothing is predicted."""

    input_ids: torch.Tensor
    segment_ids: torch.Tensor
    labels: torch.Tensor


def mask_seed(seed: int, step: int, micro_step: int, rank: int) -> int:
    """A 63-bit seed that depends on all four numbers (splitmix64 chain), stable across runs."""
    state = 0
    for value in (seed, step, micro_step, rank):
        state = (state + int(value) + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a counter-based random hash."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_keys(seed: int, stream: int, positions) -> torch.Tensor:
    """int64 [B] mask keys of rows at `positions` (global positions in the run, or row numbers) of
    `stream` (the curriculum phase); equal inputs give equal keys, on any rank, in any run."""
    base = np.uint64(mask_seed(seed, stream, 0, 0))
    with np.errstate(over="ignore"):
        keys = _splitmix64(np.asarray(positions, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03) ^ base)
    return torch.from_numpy(keys.view(np.int64))


def keyed_bits(keys: torch.Tensor, cols: int, lane: int) -> np.ndarray:
    """uint64 [B, cols] random bits, a pure function of (row key, column, lane < LANES)."""
    row = keys.numpy().view(np.uint64)[:, None]
    col = np.arange(cols, dtype=np.uint64)[None, :] * np.uint64(LANES) + np.uint64(lane)
    with np.errstate(over="ignore"):
        return _splitmix64(row ^ _splitmix64(col))


def _as_tensor(array, int64: bool = False) -> torch.Tensor:
    """numpy (zero-copy where the dtype allows) or torch input as a torch tensor."""
    if isinstance(array, torch.Tensor):
        return array.long() if int64 else array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64 if int64 else None))


def random_draws(keys: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three independent uniform draws per position from one 64-bit hash of (row key, column).

    Returns (key uint8 [rows, cols], crossing int16 [rows, cols], corruption int16 [rows, cols]):
    bits 0-7, 16-31 and 32-47 of the hash.
    """
    bits = keyed_bits(keys, cols, 0)
    key = (bits & np.uint64(0xFF)).astype(np.uint8)
    crossing = ((bits >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.uint16).view(np.int16)
    corruption = ((bits >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16).view(np.int16)
    return torch.from_numpy(key), torch.from_numpy(crossing), torch.from_numpy(corruption)


def choose_units(unit_tokens: torch.Tensor, target: torch.Tensor, key: torch.Tensor, crossing: torch.Tensor) -> torch.Tensor:
    """Which units to mask so that the masked token count per row meets `target` in expectation.

    unit_tokens: float32 [B, U], maskable tokens in each unit slot (0 = empty slot; callers AND the
    result with their maskable positions). target: float32 [B], tokens to mask per row.
    key: uint8 [B, U], crossing: int16 [B, U], uniform random draws. Returns bool [B, U].

    Units whose key is below the row's threshold key are taken; units AT the threshold key are each
    taken with probability (target - tokens below) / (tokens at the threshold key), so that the
    expected count is exactly the target (up to the 1/65536 resolution of that probability).
    """
    rows = unit_tokens.shape[0]
    key = key.long()
    cum = torch.zeros(rows, KEY_BINS).scatter_add_(1, key, unit_tokens).cumsum_(1)
    target = target[:, None]
    threshold = (cum < target).sum(1, keepdim=True)
    below = cum.gather(1, (threshold - 1).clamp_(min=0)).masked_fill_(threshold == 0, 0.0)
    at_threshold = cum.gather(1, threshold.clamp(max=KEY_BINS - 1)) - below
    share = ((target - below) / at_threshold.clamp_(min=1.0)).clamp_(0.0, 1.0)
    cutoff = (share * 65536).round_().sub_(32768).clamp_(max=32767).to(torch.int16)
    return (key < threshold) | ((key == threshold) & (crossing < cutoff))


def _below(draw: torch.Tensor, share: float) -> torch.Tensor | None:
    """draw < share as a uniform int16 comparison; None when it is always true."""
    limit = round(share * 65536) - 32768
    return None if limit >= 32768 else draw < limit


def select_positions(word_start: torch.Tensor | None, maskable: torch.Tensor, unit: str, rate: float,
                     key: torch.Tensor, crossing: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: positions chosen for prediction (all pieces of a chosen word under unit='word')."""
    maskable_f = maskable.to(torch.float32)
    target = maskable_f.sum(1).mul_(rate)
    if unit == "token":
        return choose_units(maskable_f, target, key, crossing) & maskable
    if word_start is None:
        raise ValueError("whole-word masking needs word_start flags")
    word_index = word_start.cumsum(1).sub_(1).clamp_(min=0)
    word_tokens = torch.zeros(maskable.shape).scatter_add_(1, word_index, maskable_f)
    chosen_words = choose_units(word_tokens, target, key, crossing)
    return chosen_words.gather(1, word_index) & maskable


def mask_batch(batch, spec: MaskingSpec, seed: int | torch.Tensor | torch.Generator, vocab: MaskingVocab) -> MaskedBatch:
    """Mask one packed batch (`PackedBatch(ids, word_start, segment_ids)`, numpy or torch, [B, L]).

    `seed` is the rows' keys (int64 [B], from `row_keys`: what the training stream passes) or one
    int for the whole batch (row b is then keyed `row_keys(seed, 0, b)`; evaluation and benchmarks),
    or a torch.Generator that draws one key per row (distillation's head fit).
    Position i is maskable iff its id is not special and its segment id is not 0 (padding).
    """
    ids = _as_tensor(batch.ids, int64=True)
    segments = _as_tensor(batch.segment_ids)
    word_start = _as_tensor(batch.word_start) if spec.unit == "word" else None
    if ids.dim() != 2 or segments.shape != ids.shape or (word_start is not None and word_start.shape != ids.shape):
        raise ValueError(f"ids, word_start and segment_ids must share one [B, L] shape, got {tuple(ids.shape)}")
    if ids.numel() and int(ids.max()) >= vocab.vocab_size:
        raise ValueError(f"token id {int(ids.max())} is outside the vocabulary of {vocab.vocab_size}")
    if isinstance(seed, torch.Generator):  # one fresh key per row from the caller's stream
        keys = torch.empty(ids.shape[0], dtype=torch.int64).random_(-(2 ** 63), 2 ** 63 - 1, generator=seed)
    elif isinstance(seed, torch.Tensor):
        keys = seed
    else:
        keys = row_keys(int(seed), 0, np.arange(ids.shape[0]))
    if keys.dtype != torch.int64 or keys.shape != ids.shape[:1]:
        raise ValueError(f"row keys must be int64 [{ids.shape[0]}], got {keys.dtype} {tuple(keys.shape)}")
    maskable = ~vocab.special_lut.index_select(0, ids.view(-1)).view(ids.shape) & (segments != 0)
    key, crossing, draw = random_draws(keys, ids.shape[1])
    chosen = select_positions(word_start, maskable, spec.unit, spec.rate, key, crossing)

    labels = ids.masked_fill(~chosen, IGNORE_INDEX)
    to_mask = _below(draw, spec.mask_prob)
    input_ids = ids.masked_fill(chosen if to_mask is None else chosen & to_mask, vocab.mask_id)
    if spec.random_prob > 0:
        to_random = chosen if to_mask is None else chosen & ~to_mask
        up_to_random = _below(draw, spec.mask_prob + spec.random_prob)
        if up_to_random is not None:
            to_random &= up_to_random
        if bool(to_random.any()):
            # a second hash lane: 32 bits per position, multiply-shift onto the pool (bias < pool / 2^32)
            pool = vocab.replacement_ids
            rows, cols = (t.numpy() for t in to_random.nonzero(as_tuple=True))
            with np.errstate(over="ignore"):
                lane = _splitmix64(cols.astype(np.uint64) * np.uint64(LANES) + np.uint64(1))
                bits = _splitmix64(keys.numpy().view(np.uint64)[rows] ^ lane) >> np.uint64(32)
            index = (torch.from_numpy(bits.view(np.int64)) * pool.numel()) >> 32
            input_ids.masked_scatter_(to_random, pool[index])
    return MaskedBatch(input_ids, segments.long(), labels)
