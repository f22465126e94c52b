"""The student: the teacher's architecture and weights with the new vocabulary and the teacher's MLM head.

Everything but the word-embedding rows is the teacher's (position/type embeddings, LayerNorm, all
transformer blocks). The MLM decoder is tied to the new word embeddings; its bias copies the
teacher's bias on shared rows (through the alignment) and takes `new_bias` on new rows; the head's
transform (dense + LayerNorm) is the teacher's. `teacher.mlm_head` is the teacher's own head or the
one `engine.distill.head` fitted on it; with neither (fit switched off) the head is BERT's init from
the seed and the bias zero.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.distill.teacher import Teacher
from engine.distill.vocab import Alignment


def student_config(teacher: Teacher, vocab_size: int, pad_id: int):
    """The teacher's config with the new vocabulary size, an MLM architecture and tied decoder."""
    from transformers import BertConfig

    config = BertConfig.from_dict(teacher.config.to_dict())
    config.vocab_size = vocab_size
    config.pad_token_id = pad_id
    config.architectures = ["BertForMaskedLM"]
    config.tie_word_embeddings = True
    return config


def build_student(teacher: Teacher, alignment: Alignment, embeddings: torch.Tensor, pad_id: int, seed: int,
                  new_bias: torch.Tensor | None = None):
    """transformers.BertForMaskedLM holding the student's weights (head init seeded by `seed`).

    `new_bias`: decoder bias of the new rows, in `alignment.new_ids` order (zero when None).
    """
    from transformers import BertForMaskedLM

    config = student_config(teacher, embeddings.shape[0], pad_id)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    state = model.state_dict()
    for name, value in teacher.encoder.state_dict().items():
        if not name.startswith("pooler.") and f"bert.{name}" in state:
            state[f"bert.{name}"] = value.clone()
    state["bert.embeddings.word_embeddings.weight"] = embeddings.clone()
    head = teacher.mlm_head
    for name, value in head.items():
        if name.startswith("cls.predictions.transform.") and name in state:
            state[name] = value.clone()
    bias = torch.zeros(embeddings.shape[0])
    teacher_bias = head.get("cls.predictions.bias", head.get("cls.predictions.decoder.bias"))
    if teacher_bias is not None:
        bias[torch.as_tensor(alignment.shared_new)] = teacher_bias[torch.as_tensor(alignment.shared_old)].float()
    if new_bias is not None and len(alignment.new_ids):
        bias[torch.as_tensor(alignment.new_ids)] = new_bias.float()
    for name in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        if name in state:
            state[name] = bias.clone()
    model.load_state_dict(state)
    model.tie_weights()
    return model


def assemble_embeddings(teacher: Teacher, alignment: Alignment, new_rows: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[vocab_size, hidden]: shared rows copied from the teacher, new rows from the method."""
    old = teacher.word_embeddings.float()
    table = torch.zeros(vocab_size, old.shape[1])
    table[torch.as_tensor(alignment.shared_new)] = old[torch.as_tensor(alignment.shared_old)]
    if len(alignment.new_ids):
        table[torch.as_tensor(alignment.new_ids)] = new_rows.float()
    return table


def save_student(model, folder: Path) -> None:
    model.save_pretrained(str(folder), safe_serialization=True)
