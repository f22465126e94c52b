"""Checks that an export holds the model it claims to, before it is moved into place.

ZeRO-3 exports are known to come out near-empty without an error (DeepSpeed #3841): a rank file
missing or truncated, a partition gathered as a zero-sized tensor. So the weights are checked twice:
as reassembled from the checkpoint (`check_weights`: no empty tensor, no all-zero matrix) and as
written (`check_export`: every tensor `transformers` expects for the saved config, with its shape and
the config's parameter count, nothing missing when `AutoModelForMaskedLM` loads the folder, and its
logits equal to the engine model's on a probe batch).
"""
from __future__ import annotations

from pathlib import Path

import torch

PROBE_ROWS, PROBE_LEN = 2, 24
LOGIT_TOLERANCE = 1e-4  # fp32, same weights, two implementations: differences are summation order only


class ExportCheckError(ValueError):
    """An export (or the weights it came from) that does not hold the model it should."""


def check_weights(weights: dict[str, torch.Tensor], where: Path) -> None:
    """No empty tensor, and no all-zero matrix or LayerNorm scale (biases may legitimately be zero)."""
    for name, tensor in sorted(weights.items()):
        if tensor.numel() == 0:
            raise ExportCheckError(f"{where}: tensor {name} is empty (shape {tuple(tensor.shape)})")
        suspicious = tensor.dim() >= 2 or name.endswith("LayerNorm.weight")
        if suspicious and not bool(tensor.any()):
            raise ExportCheckError(f"{where}: tensor {name} is all zeros")
        if not bool(torch.isfinite(tensor).all()):
            raise ExportCheckError(f"{where}: tensor {name} holds NaN or infinite values")


def probe_batch(vocab_size: int, special: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a fixed, seeded batch: ordinary tokens, the second row padded."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(special, vocab_size - 1), vocab_size, (PROBE_ROWS, PROBE_LEN), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, PROBE_LEN // 2:] = 0
    ids[1, PROBE_LEN // 2:] = 0
    return ids, mask


def check_export(folder: Path, model, true_vocab_size: int) -> dict:
    """Compare the HF folder `folder` with the engine `model` it was written from; returns the figures."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForMaskedLM
    from transformers import BertForMaskedLM as HFBertForMaskedLM

    written = load_file(str(folder / "model.safetensors"))
    check_weights(written, folder / "model.safetensors")
    hf_config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        reference = HFBertForMaskedLM(hf_config)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()
                if name not in tied and not name.endswith("position_ids")}
    missing = sorted(set(expected) - set(written))
    extra = sorted(set(written) - set(expected))
    if missing or extra:
        raise ExportCheckError(f"{folder}: tensors missing {missing[:3]} / unexpected {extra[:3]} for its config")
    for name, shape in expected.items():
        if tuple(written[name].shape) != shape:
            raise ExportCheckError(f"{folder}: tensor {name} has shape {tuple(written[name].shape)}, "
                                   f"config.json implies {shape}")
    parameters = sum(t.numel() for t in written.values())
    expected_parameters = sum(p.numel() for name, p in reference.named_parameters() if name not in tied)
    if parameters != expected_parameters:
        raise ExportCheckError(f"{folder}: {parameters:,} parameters written, config.json implies "
                               f"{expected_parameters:,}")

    hf_model, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ExportCheckError(f"{folder}: transformers loads it with weights missing "
                               f"{sorted(info['missing_keys'])[:3]} or mismatched {info['mismatched_keys'][:3]}")
    ids, mask = probe_batch(true_vocab_size)
    with torch.no_grad():
        ours = model.eval().logits(input_ids=ids, attention_mask=mask)[..., :true_vocab_size]
        theirs = hf_model.eval()(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    difference = float((ours[real] - theirs[real]).abs().max())
    scale = float(ours[real].abs().max())
    if not difference <= LOGIT_TOLERANCE * max(scale, 1.0):
        raise ExportCheckError(f"{folder}: logits of the exported model differ from the engine's by {difference:.3g} "
                               f"(tolerance {LOGIT_TOLERANCE * max(scale, 1.0):.3g})")
    return {"parameters": parameters, "tensors": len(written), "max_logit_difference": difference}
