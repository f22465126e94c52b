"""A training checkpoint (any ZeRO stage) → a Hugging Face BERT folder.

ZeRO 1-3 checkpoints hold the fp32 master weights in per-rank optimizer shards; DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint` reassembles them (stage 3 included). A stage-0 checkpoint
holds the full module in `mp_rank_00_model_states.pt`, read with `weights_only=True`. The model config
and the shard folder (for the tokenizer) come from the checkpoint's `run_state.json`. The folder is
written beside `out`, checked (`engine.training.export_verify`) and only then moved into place.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from engine.bert.config import BertConfig
from engine.io import has_tokenizer
from engine.training.checkpoints import CheckpointError, read_run_state, resolve_checkpoint
from engine.training.export_verify import ExportCheckError, check_export, check_weights
from engine.training.safe_load import check_files_load_safely, load_weights_only, weights_only_loads

MODEL_STATES = "mp_rank_00_model_states.pt"
VOCAB_KEY = "vocab_sha256"  # config.json key naming the vocabulary the weights were trained on


def _has_zero_shards(tag_dir: Path) -> bool:
    return any(p.name.endswith("optim_states.pt") for p in tag_dir.iterdir())


def fp32_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint tag folder, whatever its ZeRO stage."""
    try:
        if _has_zero_shards(tag_dir):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            # zero_to_fp32 calls torch.load(weights_only=False) itself: every file is first opened
            # weights-only here (so a refusal names it), then torch is forced weights-only inside.
            check_files_load_safely(tag_dir)
            with weights_only_loads(), contextlib.redirect_stdout(io.StringIO()):  # it prints a line per shard
                return dict(get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name))
        path = tag_dir / MODEL_STATES
        if not path.is_file():
            raise CheckpointError(f"{tag_dir}: neither ZeRO shards nor {MODEL_STATES}")
        states = load_weights_only(path, map_location="cpu")
        return {k: v.float() for k, v in states["module"].items()}
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or missing rank files surface as many exception types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{tag_dir}: cannot reassemble the weights ({type(exc).__name__}: {reason})") from None


def load_checkpoint_model(checkpoint: Path):
    """(model, model config, run state) of a complete checkpoint, weights in fp32 on the CPU."""
    from engine.bert.modeling import BertForMaskedLM

    tag_dir = resolve_checkpoint(Path(checkpoint))
    state = read_run_state(tag_dir)
    config = BertConfig(**state["model"])
    model = BertForMaskedLM(config)
    weights = fp32_state_dict(tag_dir)
    try:
        check_weights(weights, tag_dir)
    except ExportCheckError as exc:
        raise CheckpointError(str(exc)) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights) - {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"})
    if missing:
        raise CheckpointError(f"{tag_dir}: checkpoint lacks weights {missing[:5]}")
    for name, tensor in weights.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{tag_dir}: {name} has shape {tuple(tensor.shape)}, "
                                  f"the saved model config implies {tuple(expected[name].shape)}")
    model.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=False)
    model.tie_weights()
    return model.eval(), config, state, tag_dir


def check_tokenizer_is_the_runs(tag_dir: Path, state: dict, tokenizer_dir: Path) -> None:
    """The exported tokenizer must be the vocabulary the checkpoint was trained on: the one recorded
    in the checkpoint, else (older checkpoints) the run's shard folder when it is still there."""
    from engine.shards.vocab import VocabError, check_same_vocabulary, vocabulary_sha256

    recorded = state.get("vocab_sha256")
    given = vocabulary_sha256(tokenizer_dir)
    if recorded is not None:
        if given != recorded:
            raise CheckpointError(f"--tokenizer {tokenizer_dir}: not the vocabulary {tag_dir} was trained on "
                                  f"(sha256 {str(given)[:12]}… vs {recorded[:12]}…)")
        return
    shards = Path(state.get("config", {}).get("data", {}).get("shards", ""))
    if shards.is_dir():
        try:
            check_same_vocabulary(("--tokenizer", tokenizer_dir), (f"the shard folder of {tag_dir}", shards))
        except VocabError as exc:
            raise CheckpointError(str(exc)) from None


def export_checkpoint(checkpoint: Path, out: Path, tokenizer_dir: Path | None = None, overwrite: bool = False) -> dict:
    """Write `out` as a HF folder (safetensors + config + tokenizer), checked; all or nothing.
    Returns the check's figures (`parameters`, `tensors`, `max_logit_difference`) and the `folder`."""
    from engine.bert.hf_io import save_hf_folder
    from engine.shards.vocab import vocabulary_sha256

    out = Path(out)
    model, config, state, tag_dir = load_checkpoint_model(checkpoint)
    if tokenizer_dir is None:
        tokenizer_dir = Path(state["config"]["data"]["shards"])
    if not has_tokenizer(tokenizer_dir):
        raise CheckpointError(f"{tag_dir}: no tokenizer in {tokenizer_dir} (the run's shard folder); "
                              f"pass --tokenizer DIR")
    check_tokenizer_is_the_runs(tag_dir, state, Path(tokenizer_dir))
    figures: dict = {}

    def check(staged: Path) -> None:  # inside save_hf_folder's build folder: a failed check leaves `out` as it was
        try:
            figures.update(check_export(staged, model, config.vocab_size))
        except ExportCheckError as exc:
            raise CheckpointError(f"export check failed: {exc}") from None

    save_hf_folder(model, out, tokenizer_dir=tokenizer_dir, true_vocab_size=config.vocab_size,
                   overwrite=overwrite, inputs={"checkpoint": Path(checkpoint), "checkpoint tag": tag_dir},
                   config_extras={VOCAB_KEY: vocabulary_sha256(tokenizer_dir)}, check=check)
    return {"folder": out, "checkpoint": tag_dir, **figures}


@contextlib.contextmanager
def exported_checkpoint(checkpoint: Path, tokenizer_dir: Path | None = None) -> Iterator[Path]:
    """`export_checkpoint` (verified) into a temporary folder, removed on exit (also when the caller fails).

    For tools that take an HF folder (the NER evaluator) but are handed a run's checkpoint: the
    same export code as `export_hf.py`, without leaving a copy of the weights behind.
    """
    scratch = Path(tempfile.mkdtemp(prefix="bioptimus-export-"))
    try:
        yield export_checkpoint(checkpoint, scratch / "hf", tokenizer_dir)["folder"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
