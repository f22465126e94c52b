"""Sub-piece alignment and windows: every word predicted exactly once, from its own first piece."""
from __future__ import annotations

import pytest
import torch

from engine.corpus.demo import write_demo_ner
from engine.ner.conll import read_conll, write_predictions
from engine.ner.finetune import Recipe, predict_tags
from engine.ner.model_io import load_tokenizer
from engine.ner.scoring import score
from tests.tiny_model import write_tiny_bert
from engine.ner.windows import IGNORE, gather_word_predictions, make_windows
from tests.conftest import shared_path, teacher_dir


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo NER files plus a tiny tokenizer that knows only some words (others split into characters)."""
    root = tmp_path_factory.mktemp("ner_windows")
    data = write_demo_ner(root / "data", sizes=(60, 20, 40))
    words = sorted({w for s in read_conll(data / "train.tsv").sentences for w in s.words})
    tokenizer = load_tokenizer(write_tiny_bert(root / "tiny", words[::3]))
    return data, tokenizer


def _gold_as_prediction(tokenizer, path, out, max_length, context):
    """Reader → label ids → windows → 'predictions' read off the windows → writer → reader → score."""
    data = read_conll(path)
    sentences = data.sentences
    labels = ["O"] + sorted({t for s in sentences for t in s.tags} - {"O"})
    label_id = {label: i for i, label in enumerate(labels)}
    windows = make_windows(tokenizer, [s.words for s in sentences], [[label_id[t] for t in s.tags] for s in sentences],
                           max_length, context)
    wrong = len(labels) - 1  # any position read other than an owned first piece turns into a wrong entity tag
    rows = [[wrong if label == IGNORE else label for label in w.labels] for w in windows]
    ids = gather_word_predictions(windows, rows, [len(s.words) for s in sentences])
    write_predictions(out, data, [[labels[i] for i in row] for row in ids])
    back = read_conll(out).sentences
    assert [s.words for s in back] == [s.words for s in sentences]
    return windows, score([[m[0] for m in s.middle] for s in back], [s.tags for s in back])


def test_gold_as_prediction_scores_f1_one_through_windows_on_demo_data(demo, tmp_path):
    data, tokenizer = demo
    windows, result = _gold_as_prediction(tokenizer, data / "test.tsv", tmp_path / "p.tsv", max_length=12, context=2)
    assert len(windows) > 2 * 40  # the tiny length really forces several windows per sentence
    assert result["f1"] == 1.0 and result["support"] > 0


@pytest.mark.parametrize("task", ["NCBI-disease", "BC5CDR-chem", "BC5CDR-disease"])
def test_gold_as_prediction_scores_f1_one_on_shared_test_sets(task, tmp_path):
    path = shared_path("ner", task, "test.tsv")
    tokenizer = load_tokenizer(teacher_dir())
    windows, result = _gold_as_prediction(tokenizer, path, tmp_path / "p.tsv", max_length=16, context=3)
    assert len(windows) > len(read_conll(path).sentences)
    assert result["f1"] == 1.0


def test_prediction_is_read_at_the_first_piece_of_its_own_word(demo):
    data, tokenizer = demo
    sentences = read_conll(data / "devel.tsv").sentences
    windows = make_windows(tokenizer, [s.words for s in sentences], None, max_length=10, context=2)
    for window in windows:
        for word, position in window.word_positions:
            first_piece = tokenizer(sentences[window.sentence].words[word], add_special_tokens=False)["input_ids"][0]
            assert window.input_ids[position] == first_piece


def test_windows_fit_max_length_and_start_and_end_with_special_tokens(demo):
    data, tokenizer = demo
    sentences = read_conll(data / "devel.tsv").sentences
    for window in make_windows(tokenizer, [s.words for s in sentences], None, max_length=10, context=2):
        assert len(window.input_ids) <= 10
        assert window.input_ids[0] == tokenizer.cls_token_id and window.input_ids[-1] == tokenizer.sep_token_id
        assert len(window.labels) == len(window.input_ids)


def test_inner_windows_have_context_on_both_sides_of_their_owned_words(demo):
    _, tokenizer = demo
    words = [f"w{i}" for i in range(40)]  # unknown words: 2 pieces each ('w', '##N' …)
    windows = make_windows(tokenizer, [words], None, max_length=20, context=4)
    assert len(windows) >= 3
    owned = [w for window in windows for w, _ in window.word_positions]
    assert owned == list(range(40))  # each word once, in order
    for window in windows[1:]:
        assert window.word_positions[0][1] > 1  # context pieces between [CLS] and the first owned word
    for window in windows[:-1]:
        assert window.word_positions[-1][1] < len(window.input_ids) - 2  # context before [SEP]


def test_word_without_pieces_becomes_unk_and_overlong_word_is_cut_but_predicted(demo):
    _, tokenizer = demo
    words = ["the", "\u200b", "x" * 50, "the"]
    windows = make_windows(tokenizer, [words], [[0, 1, 2, 3]], max_length=12, context=2)
    ids = gather_word_predictions(windows, [[0 if l == IGNORE else l for l in w.labels] for w in windows], [4])
    assert ids == [[0, 1, 2, 3]]
    assert tokenizer.unk_token_id in windows[0].input_ids


def test_gather_refuses_a_word_left_without_prediction(demo):
    _, tokenizer = demo
    windows = make_windows(tokenizer, [["a", "b"]], None, max_length=12, context=0)
    windows[0].word_positions.pop()
    with pytest.raises(AssertionError, match="word 1 has no prediction"):
        gather_word_predictions(windows, [[0] * len(windows[0].input_ids)], [2])


class _Oracle(torch.nn.Module):
    """Outputs the gold label at each position of a row it has seen (keyed by the row's input ids)."""

    def __init__(self, windows, num_labels):
        super().__init__()
        self.table = {tuple(w.input_ids): w.labels for w in windows}
        self.num_labels = num_labels

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.num_labels)
        for row, ids in enumerate(input_ids.tolist()):
            length = int(attention_mask[row].sum())
            for position, label in enumerate(self.table[tuple(ids[:length])]):
                logits[row, position, label if label != IGNORE else self.num_labels - 1] = 1.0
        return type("Output", (), {"logits": logits})


def test_oracle_model_through_batched_padded_prediction_scores_f1_one(demo):
    data, tokenizer = demo
    sentences = read_conll(data / "test.tsv").sentences
    labels = ["O"] + sorted({t for s in sentences for t in s.tags} - {"O"})
    label_id = {label: i for i, label in enumerate(labels)}
    words = [s.words for s in sentences]
    # Whole sentences fit one window here (windows are covered above), so a row's ids identify its labels.
    gold_windows = make_windows(tokenizer, words, [[label_id[t] for t in s.tags] for s in sentences], 128, 8)
    assert len(gold_windows) == len(sentences)
    recipe = Recipe(lr=1e-3, epochs=1, batch_size=4, max_length=128, context=8, device="cpu", bf16=False,
                    eval_batch_size=7)
    predicted = predict_tags(_Oracle(gold_windows, len(labels)), tokenizer, words, labels, recipe)
    assert score([s.tags for s in sentences], predicted)["f1"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_window_plan_owns_every_word_once_in_order_within_capacity(seed):
    import random

    from engine.ner.windows import _plan
    rng = random.Random(seed)
    for _ in range(200):
        capacity = rng.randint(2, 40)
        context = rng.randint(0, capacity // 4)
        sizes = [rng.randint(1, capacity - context) for _ in range(rng.randint(1, 60))]
        plans = _plan(sizes, capacity, context)
        assert [w for _, own_lo, own_hi, _ in plans for w in range(own_lo, own_hi)] == list(range(len(sizes)))
        for lo, own_lo, own_hi, hi in plans:
            assert lo <= own_lo < own_hi <= hi and sum(sizes[lo:hi]) <= capacity
