"""The MLM-head fit for a teacher without a head: what trains, that it helps, determinism, how it reaches the student."""
from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from engine.curriculum.masking import MaskingSpec, MaskingVocab, mask_batch
from engine.distill import head as heads
from engine.distill.pipeline import DistillConfig, run
from engine.distill.teacher import load_teacher
from engine.shards.reader import PackedBatch
from tests.test_distill_init import NEW, OLD, _write_teacher

WORDS = [t for t in OLD if not t.startswith(("[", "##"))]


def _texts(count: int, seed: int) -> list[str]:
    """Sentences with a skewed word distribution (what a unigram-aware head can exploit)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(len(WORDS))]
    return [" ".join(rng.choices(WORDS, weights, k=20)) for _ in range(count)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return load_teacher(_write_teacher(tmp_path_factory.mktemp("head") / "teacher", with_head=False))


def _fit(teacher, seed=0, steps=30):
    windows = heads.text_windows(teacher.tokenizer, _texts(120, seed=1), 32, 120)
    return heads.fit_mlm_head(teacher, windows, encoded=96, steps=steps, batch_positions=64, lr=1e-2, seed=seed,
                              device=torch.device("cpu"), held_out=16)


def test_head_fit_changes_neither_encoder_nor_embeddings(teacher):
    before = {k: v.clone() for k, v in teacher.encoder.state_dict().items()}
    embeddings = teacher.word_embeddings.clone()
    fit = _fit(teacher)
    after = teacher.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(teacher.word_embeddings, embeddings)
    assert set(fit.state) == set(heads.HEAD_KEYS)


def test_fitted_head_lowers_held_out_mlm_loss_against_a_fresh_head(teacher):
    fit = _fit(teacher)
    # Scored again here on text the fit never read, with masks of its own.
    windows = heads.text_windows(teacher.tokenizer, _texts(40, seed=99), 32, 40)
    ids = torch.tensor([w + [0] * (32 - len(w)) for w in windows])
    special = torch.zeros(len(OLD), dtype=torch.bool)
    special[:5] = True
    vocab = MaskingVocab(OLD.index("[MASK]"), special, (~special).nonzero().flatten())
    corrupted, labels = heads.mask_windows(ids, (ids != 0).long(), vocab, torch.Generator().manual_seed(7))
    with torch.no_grad():
        states = teacher.encoder(input_ids=corrupted, attention_mask=(ids != 0).long()).last_hidden_state
    where = labels != -100

    def loss(state):
        head = heads.TiedHead(teacher.config, teacher.word_embeddings)
        if state is not None:
            heads.load_head_state(head, state, torch.device("cpu"))
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(head(states[where]), labels[where]))

    torch.manual_seed(0)
    fresh = loss(None)
    assert loss(fit.state) < fresh - 0.3
    assert fit.held_out_fitted < fit.held_out_fresh
    # On every position it was fitted on, not first vs last minibatch: two 64-position minibatches
    # differ by more (~0.15) than the whole fit gains here (~0.05), whichever masks were drawn.
    assert fit.fitted_positions_after < fit.fitted_positions_before


def test_head_fit_is_deterministic_given_the_seed(teacher):
    first, second, other = _fit(teacher, seed=3), _fit(teacher, seed=3), _fit(teacher, seed=4)
    assert all(torch.equal(first.state[k], second.state[k]) for k in heads.HEAD_KEYS)
    assert not torch.equal(first.state["cls.predictions.transform.dense.weight"],
                           other.state["cls.predictions.transform.dense.weight"])


def test_head_fit_masks_windows_with_the_pre_training_masking():
    ids = torch.randint(5, 1000, (64, 40))
    ids[:, 0] = 2  # [CLS]-like special
    ids[:32, 30:] = 0  # padded tails
    special = torch.zeros(1000, dtype=torch.bool)
    special[:5] = True
    vocab = MaskingVocab(4, special, torch.arange(5, 1000))
    attention = (ids != 0).long()
    corrupted, labels = heads.mask_windows(ids, attention, vocab, torch.Generator().manual_seed(0))
    expected = mask_batch(PackedBatch(ids, torch.ones_like(ids), attention), MaskingSpec(unit="token"),
                          torch.Generator().manual_seed(0), vocab)
    assert torch.equal(corrupted, expected.input_ids) and torch.equal(labels, expected.labels)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:32, 30:].any()  # never a special, never padding
    assert abs(int(chosen[32:].sum()) - 0.15 * 32 * 39) <= 32  # the rate is per row of maskable tokens


def test_student_gets_the_fitted_head_through_the_alignment(tmp_path):
    teacher_dir = _write_teacher(tmp_path / "teacher", with_head=False)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(NEW) + "\n", encoding="utf-8")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(_texts(60, seed=2)):
        (corpus / f"{i}.txt").write_text(text + " cisplatin nephrotoxicity.", encoding="utf-8")
    cache = tmp_path / "cache"
    config = DistillConfig(teacher=str(teacher_dir), vocab=str(vocab), corpus=str(corpus), out=str(tmp_path / "out"),
                           method="fvt", device="cpu", probes=[], head_steps=10, head_windows=40, cache_dir=str(cache),
                           new_token_bias="pieces_min")
    report = run(config, log=lambda *_: None)
    (cached,) = cache.glob("mlm-head-*.safetensors")
    fitted = load_file(str(cached))
    student = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name in heads.HEAD_KEYS[:4]:
        assert torch.equal(student[name], fitted[name]), name
    bias, old_bias = student["cls.predictions.bias"], fitted["cls.predictions.bias"]
    for token in ("drug", "kidney", "##s", "[CLS]", "[MASK]"):  # [CLS] is id 1 here, 2 in the teacher
        assert bias[NEW.index(token)] == old_bias[OLD.index(token)], token
    pieces = [OLD.index(p) for p in ("nephro", "##tox", "##icity")]
    assert bias[NEW.index("nephrotoxicity")] == old_bias[pieces].min()
    assert bias[NEW.index("zzz")] == pytest.approx(float(old_bias.mean()))  # unspellable → mean bias
    assert report["mlm_head_fit"]["held_out_loss_fitted_head"] < report["mlm_head_fit"]["held_out_loss_fresh_head"]


def test_no_head_fit_when_switched_off_or_the_teacher_has_a_head(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(NEW) + "\n", encoding="utf-8")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(" ".join(_texts(8, seed=3)), encoding="utf-8")
    for name, with_head, fit_head in (("off", False, "no"), ("has", True, "auto")):
        teacher_dir = _write_teacher(tmp_path / f"teacher-{name}", with_head=with_head)
        config = DistillConfig(teacher=str(teacher_dir), vocab=str(vocab), corpus=str(corpus),
                               out=str(tmp_path / name), method="fvt", device="cpu", probes=[], fit_head=fit_head)
        report = run(config, log=lambda *_: None)
        assert report["mlm_head_fit"] is None and "fit_mlm_head" not in report["seconds"]
    bias = load_file(str(tmp_path / "off" / "model.safetensors"))["cls.predictions.bias"]
    assert torch.count_nonzero(bias) == 0


def test_unigram_bias_puts_new_tokens_on_the_fitted_bias_scale_by_corpus_frequency():
    old_bias = torch.tensor([0.0, 1.0, 3.0, -2.0])
    # new vocabulary: ids 0, 1 share old ids 1, 2; ids 2, 3, 4 are new
    counts = torch.tensor([3, 30, 300, 3, 0])
    shared_new, shared_old, new_ids = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([2, 3, 4])
    bias = heads.unigram_bias(old_bias, counts, shared_new, shared_old, new_ids)
    log_count = torch.log(counts.float() + 0.5)
    offset = ((1.0 - log_count[0]) + (3.0 - log_count[1])) / 2
    assert torch.allclose(bias, log_count[new_ids] + offset)
    assert bias[0] > bias[1] > bias[2]  # the more frequent in the corpus, the higher
    assert torch.isclose(bias[1], torch.tensor(1.0) + (offset - (1.0 - log_count[0])))  # same count as shared id 0


def test_pipeline_unigram_bias_follows_corpus_frequency_of_new_tokens(tmp_path):
    teacher_dir = _write_teacher(tmp_path / "teacher", with_head=True)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(NEW) + "\n", encoding="utf-8")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("cisplatin cisplatin cisplatin nephrotoxicity. the drug was given.", encoding="utf-8")
    config = DistillConfig(teacher=str(teacher_dir), vocab=str(vocab), corpus=str(corpus), out=str(tmp_path / "out"),
                           method="fvt", device="cpu", probes=[], new_token_bias="unigram")
    run(config, log=lambda *_: None)
    bias = load_file(str(tmp_path / "out" / "model.safetensors"))["cls.predictions.bias"]
    assert bias[NEW.index("cisplatin")] > bias[NEW.index("nephrotoxicity")] > bias[NEW.index("zzz")]
