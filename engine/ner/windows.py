"""Word-level labels ↔ sub-piece model inputs, with sentences longer than the model split into windows.

Each word's label sits on its first sub-piece; the other pieces get -100 (ignored by the loss and
by prediction). A sentence whose pieces exceed `max_length - 2` is cut into windows on word
boundaries. Windows overlap by up to `context` pieces on each side, but every word is *owned* by
exactly one window (the one where it is not in the overlap margin), and only owned words carry a
label; so each word is trained on once and predicted once, with context on both sides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class Window:
    """One model input row and the words whose predictions it owns."""

    sentence: int  # index of the sentence in its split
    input_ids: list[int]  # [CLS] pieces [SEP]
    labels: list[int]  # label id on the first piece of each owned word, IGNORE elsewhere
    word_positions: list[tuple[int, int]]  # (word index in sentence, piece position in input_ids) of owned words


def word_pieces(tokenizer, words: list[str], max_pieces: int) -> list[list[int]]:
    """Piece ids of each word (tokenised alone); a word with no pieces becomes [UNK]; long words are cut."""
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    unk = tokenizer.unk_token_id
    return [(ids or [unk])[:max_pieces] for ids in encoded]


def _plan(sizes: list[int], capacity: int, context: int) -> list[tuple[int, int, int, int]]:
    """(lo, own_lo, own_hi, hi) word ranges: window holds words [lo, hi), owns [own_lo, own_hi).

    Needs every size ≤ capacity - context, so the first owned word always fits after the left context.
    """
    plans, own_lo, n = [], 0, len(sizes)
    while own_lo < n:
        lo, used = own_lo, 0
        while lo > 0 and used + sizes[lo - 1] <= context:
            lo -= 1
            used += sizes[lo]
        hi = own_lo
        while hi < n and used + sizes[hi] <= capacity:
            used += sizes[hi]
            hi += 1
        own_hi = hi
        if hi < n:  # not the last window: leave a right margin of context for the next one
            margin = 0
            while own_hi - 1 > own_lo and margin + sizes[own_hi - 1] <= context:
                own_hi -= 1
                margin += sizes[own_hi]
        plans.append((lo, own_lo, own_hi, hi))
        own_lo = own_hi
    return plans


def make_windows(tokenizer, sentences_words: list[list[str]], sentences_labels: list[list[int]] | None,
                 max_length: int, context: int) -> list[Window]:
    """Windows for every sentence (labels None at prediction time: all owned words get label 0)."""
    capacity = max_length - 2
    if capacity < 2 or not 0 <= context <= capacity // 4:
        raise ValueError(f"max_length {max_length} / context {context}: need max_length ≥ 4 and 0 ≤ context ≤ (max_length-2)//4")
    max_pieces = capacity - context
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    windows = []
    for index, words in enumerate(sentences_words):
        pieces = word_pieces(tokenizer, words, max_pieces)
        labels = sentences_labels[index] if sentences_labels is not None else [0] * len(words)
        for lo, own_lo, own_hi, hi in _plan([len(p) for p in pieces], capacity, context):
            ids, row_labels, positions = [cls], [IGNORE], []
            for w in range(lo, hi):
                if own_lo <= w < own_hi:
                    positions.append((w, len(ids)))
                    row_labels += [labels[w]] + [IGNORE] * (len(pieces[w]) - 1)
                else:
                    row_labels += [IGNORE] * len(pieces[w])
                ids += pieces[w]
            windows.append(Window(index, ids + [sep], row_labels + [IGNORE], positions))
    return windows


def collate(windows: list[Window], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest row: input_ids, attention_mask, labels as int64 [B, L]."""
    length = max(len(w.input_ids) for w in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, w in enumerate(windows):
        ids[row, :len(w.input_ids)] = torch.tensor(w.input_ids)
        labels[row, :len(w.labels)] = torch.tensor(w.labels)
        mask[row, :len(w.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def gather_word_predictions(windows: list[Window], row_predictions: list[list[int]],
                            sentence_lengths: list[int]) -> list[list[int]]:
    """Per-sentence word label ids from per-row piece predictions; fails if a word is missed or doubled."""
    out: list[list[int | None]] = [[None] * n for n in sentence_lengths]
    for window, row in zip(windows, row_predictions, strict=True):
        for word, position in window.word_positions:
            if out[window.sentence][word] is not None:
                raise AssertionError(f"sentence {window.sentence} word {word} predicted twice")
            out[window.sentence][word] = row[position]
    for index, words in enumerate(out):
        if any(w is None for w in words):
            raise AssertionError(f"sentence {index}: word {words.index(None)} has no prediction")
    return out  # type: ignore[return-value]
