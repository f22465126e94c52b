"""The BLURB NER tasks: where their files live, their fine-tuning presets, published scores to compare.

Presets are the BLURB/BioLinkBERT recipes (learning rate, epochs, batch size per task). Published
numbers are entity-level test F1 (%) from the BIOptimus paper (v0.4) and BLURB (PubMedBERT).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.ner.conll import ConllFile, read_conll
from engine.ner.errors import NerError
from engine.ner.iob import Scheme, normalise_tags


@dataclass(frozen=True)
class TaskPreset:
    """Fine-tuning recipe of one task (BLURB / BioLinkBERT)."""

    lr: float  # peak AdamW learning rate
    epochs: int  # passes over train; the best devel epoch is kept
    batch_size: int  # sentences (windows) per optimizer step


PRESETS: dict[str, TaskPreset] = {
    "bc5cdr-chem": TaskPreset(5e-5, 20, 32),
    "bc5cdr-disease": TaskPreset(5e-5, 8, 16),
    "ncbi-disease": TaskPreset(5e-5, 20, 32),
    "bc2gm": TaskPreset(6e-5, 50, 32),
    "jnlpba": TaskPreset(1e-5, 5, 16),
}
DEFAULT_PRESET = TaskPreset(5e-5, 20, 32)  # for a user-supplied task outside BLURB

PUBLISHED: dict[str, dict[str, float]] = {
    "BIOptimus v0.4": {"bc5cdr-chem": 94.10, "bc5cdr-disease": 84.98, "ncbi-disease": 89.54,
                       "bc2gm": 85.25, "jnlpba": 79.46},
    "PubMedBERT": {"bc5cdr-chem": 93.33, "bc5cdr-disease": 85.62, "ncbi-disease": 87.82,
                   "bc2gm": 84.52, "jnlpba": 79.10},
}

SPLIT_NAMES = {"train": ("train",), "devel": ("devel", "dev"), "test": ("test",)}
EXTENSIONS = (".tsv", ".txt", ".conll", ".iob2", ".iob")


@dataclass
class TaskData:
    """The three splits of a task, checked and in IOB2, with the label set taken from train."""

    name: str  # lower-case task name, e.g. "ncbi-disease"
    folder: Path  # the folder the splits were read from
    splits: dict[str, ConllFile]  # "train" / "devel" / "test"
    labels: list[str]  # "O" first, then the train labels sorted
    schemes: dict[str, str]  # split → dialect found in the file ("iob2", "iobes", "iob2 untyped (type Gene)" ...)
    repaired: dict[str, int]  # split → number of I- tags repaired into B-


def available_tasks(data_root: str | Path) -> list[str]:
    """Lower-case names of the sub-folders of `data_root` that hold a train file."""
    root = Path(data_root)
    if not root.is_dir():
        raise NerError(f"{root}: data folder not found")
    names = [p.name.lower() for p in sorted(root.iterdir()) if p.is_dir() and _find_split(p, "train")]
    if not names:
        raise NerError(f"{root}: no task folders with train/devel/test files (expected {root}/<TASK>/train.tsv)")
    return names


def task_folder(data_root: str | Path, task: str) -> Path:
    """`data_root/<TASK>` matched case-insensitively (BC5CDR-chem ↔ bc5cdr-chem)."""
    root = Path(data_root)
    if not root.is_dir():
        raise NerError(f"{root}: data folder not found")
    for path in root.iterdir():
        if path.is_dir() and path.name.lower() == task.lower():
            return path
    hint = " (not shipped in shared data; supply BLURB's files in the same format)" if task in ("bc2gm", "jnlpba") else ""
    raise NerError(f"{root}: no folder for task {task!r}{hint}")


def _find_split(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_NAMES[split]:
        for ext in EXTENSIONS:
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    return None


def preset_for(task: str) -> TaskPreset:
    return PRESETS.get(task.lower(), DEFAULT_PRESET)


def load_task(data_root: str | Path, task: str, scheme: Scheme = "auto", repair: bool = False,
              max_train_sentences: int | None = None, entity_type: str | None = None) -> TaskData:
    """Read and check train/devel/test of `task` (tags to IOB2); devel/test labels must all occur in train.

    Bare `B`/`I`/`O` tags get `entity_type`, by default the task folder's name, so that reports stay
    per type (BioBERT's `BC2GM/train.tsv` reads as `B-BC2GM` ...).
    """
    folder = task_folder(data_root, task)
    splits, schemes, repaired = {}, {}, {}
    for split in ("train", "devel", "test"):
        path = _find_split(folder, split)
        if path is None:
            names = "/".join(f"{s}.tsv" for s in SPLIT_NAMES[split])
            raise NerError(f"{folder}: no {split} file ({names})")
        data = read_conll(path)
        report = normalise_tags(data, scheme, repair, entity_type or folder.name)
        splits[split], schemes[split], repaired[split] = data, report.scheme, report.repaired
    train_labels = {"O"} | {t for s in splits["train"].sentences for t in s.tags}
    for split in ("devel", "test"):
        for sentence in splits[split].sentences:
            for tag, line in zip(sentence.tags, sentence.lines):
                if tag not in train_labels:
                    raise NerError(f"{splits[split].path}:{line}: label {tag!r} does not occur in train "
                                   f"({splits['train'].path})")
    labels = ["O"] + sorted(train_labels - {"O"})
    if max_train_sentences is not None:  # a quick run: slice after the label set is fixed from all of train
        splits["train"].sentences = splits["train"].sentences[:max_train_sentences]
    return TaskData(task.lower(), folder, splits, labels, schemes, repaired)
