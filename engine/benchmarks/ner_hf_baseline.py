"""The usual alternative to this stage, for benchmarks: Hugging Face `Trainer` as in its run_ner example.

Same model, data, seed and hyper-parameters; sentences are tokenised with `is_split_into_words`,
truncated at `max_length` (words past it get `O`, as the example silently drops them), labels on first
pieces, `DataCollatorForTokenClassification`, linear schedule with warm-up. Scored with the same
strict seqeval scorer, so its F1 can be set beside ours.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from engine.ner.model_io import load_token_classifier
from engine.ner.scoring import score
from engine.ner.tasks import TaskData
from engine.ner.windows import IGNORE


def _encode(tokenizer, sentences, label_id, max_length):
    rows = []
    for sentence in sentences:
        enc = tokenizer(sentence.words, is_split_into_words=True, truncation=True, max_length=max_length)
        labels, previous = [], None
        for word in enc.word_ids():
            labels.append(IGNORE if word is None or word == previous else label_id[sentence.tags[word]])
            previous = word
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})
    return rows


def _decode(predictions, rows, sentences, labels):
    """Word tags from the first-piece argmax; words cut by truncation are tagged O (and counted)."""
    tags, truncated = [], 0
    for logits, row, sentence in zip(predictions, rows, sentences):
        ids = [int(logits[i].argmax()) for i, label in enumerate(row["labels"]) if label != IGNORE]
        truncated += len(sentence.words) - len(ids)
        tags.append([labels[i] for i in ids] + ["O"] * (len(sentence.words) - len(ids)))
    return tags, truncated


def run_hf_trainer(model_dir: Path, tokenizer, task: TaskData, seed: int, lr: float, epochs: int, batch_size: int,
                   max_length: int, warmup_ratio: float, weight_decay: float, use_cpu: bool) -> dict:
    """Fine-tune with `transformers.Trainer`; devel/test scores of the final epoch and wall time."""
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments, set_seed
    started = time.perf_counter()
    label_id = {label: i for i, label in enumerate(task.labels)}
    encoded = {split: _encode(tokenizer, data.sentences, label_id, max_length) for split, data in task.splits.items()}
    set_seed(seed)
    model = load_token_classifier(model_dir, task.labels)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, learning_rate=lr, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=64, warmup_steps=warmup_ratio, weight_decay=weight_decay,
            lr_scheduler_type="linear", max_grad_norm=1.0, seed=seed, save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to=[], use_cpu=use_cpu, bf16=not use_cpu, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=encoded["train"],
                          data_collator=DataCollatorForTokenClassification(tokenizer))
        trainer.train()
        out = {"framework": "transformers.Trainer"}
        for split in ("devel", "test"):
            predictions = trainer.predict(encoded[split]).predictions
            tags, truncated = _decode(predictions, encoded[split], task.splits[split].sentences, task.labels)
            out[split] = score([s.tags for s in task.splits[split].sentences], tags)
            out[f"{split}_words_truncated"] = truncated
    out["wall_s"] = time.perf_counter() - started
    return out
