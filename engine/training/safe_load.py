"""Load checkpoint files without running code from them.

DeepSpeed reads its checkpoint files with `torch.load(weights_only=False)` (its checkpoint engine,
ZeRO shard loading, `zero_to_fp32`): a pickle with a `__reduce__` in any of them would run as soon
as the file is opened, and users share checkpoints. Two layers keep that from happening:
- `SafeCheckpointEngine` replaces the engine's checkpoint engine, so every file DeepSpeed's
  `load_checkpoint` opens goes through `torch.load(weights_only=True)`, and a refusal names the file;
- `weights_only_loads()` sets torch's own `TORCH_FORCE_WEIGHTS_ONLY_LOAD` switch for the duration,
  which turns every `torch.load` inside (DeepSpeed's direct calls included) into a weights-only load.
The few non-tensor classes DeepSpeed pickles (enums and plain containers) are allowed by name.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

import torch

from engine.training.checkpoints import CheckpointError

FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
NO_FORCE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def _deepspeed_globals() -> list:
    """Classes that DeepSpeed 0.19 itself writes into checkpoints (found by listing the pickle
    opcodes of ZeRO 0-3 checkpoints); nothing here can run code on load."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler, DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def allow_deepspeed_globals() -> None:
    torch.serialization.add_safe_globals(_deepspeed_globals())


@contextlib.contextmanager
def weights_only_loads():
    """Every `torch.load` inside this block loads tensors and plain containers only."""
    allow_deepspeed_globals()
    saved = {key: os.environ.get(key) for key in (FORCE, NO_FORCE)}
    os.environ[FORCE] = "1"
    os.environ.pop(NO_FORCE, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_weights_only(path: str | Path, map_location=None):
    """`torch.load(path, weights_only=True)`, a refusal or a damaged file as one `CheckpointError`."""
    allow_deepspeed_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused to load, it holds more than tensors ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint file ({first})") from None


def check_files_load_safely(tag_dir: Path) -> None:
    """Open every `.pt` of a tag folder weights-only; raises on the first that is refused."""
    for path in sorted(Path(tag_dir).rglob("*.pt")):
        load_weights_only(path, map_location="cpu")


def use_safe_checkpoint_engine(engine) -> None:
    """Swap the DeepSpeed engine's checkpoint engine for one whose `load` is weights-only."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return load_weights_only(path, map_location=map_location)

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise CheckpointError(f"safe loading supports DeepSpeed's TorchCheckpointEngine, this run uses "
                              f"{type(current).__name__}")
    safe = SafeCheckpointEngine.__new__(SafeCheckpointEngine)
    safe.__dict__.update(current.__dict__)
    engine.checkpoint_engine = safe
