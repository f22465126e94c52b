"""Validation MLM loss on the held-out split, with masks that are the same at every evaluation.

The masks come from a fixed seed and a fixed spec (token masking, 15 %, 80/10/10) whatever the
training phase is, so validation losses of one run are comparable across the curriculum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist

from engine.config import ConfigError
from engine.curriculum.masking import MaskingSpec, mask_batch, mask_seed

EVAL_SPEC = MaskingSpec(unit="token", rate=0.15)
EVAL_SEED_OFFSET = 0x5EED  # keeps validation masks apart from training masks of the same seed


@dataclass
class ValidationSet:
    shards: object  # PackedShards of the valid split
    vocab: object  # the stream's MaskingVocab
    micro: int  # sequences per batch
    steps: int  # batches per rank per evaluation
    seed: int  # run seed
    rank: int
    world_size: int

    @classmethod
    def open(cls, config, stream, dist) -> "ValidationSet":
        from engine.shards import PackedShards

        seq_len = min(stream.shard_sets)
        try:
            shards = PackedShards(config.data.shards, split="valid", seq_len=seq_len)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"eval: no valid split of seq_len {seq_len} in {config.data.shards} ({exc}); "
                              f"set eval.interval=0 to train without validation") from None
        if len(shards) == 0:
            raise ConfigError(f"eval: the valid split in {config.data.shards} is empty; set eval.interval=0")
        return cls(shards, stream.vocab, config.batch.micro, config.eval.steps, config.seed, dist.rank,
                   dist.world_size)

    def batch_rows(self, index: int) -> np.ndarray:
        """Rows of validation batch `index` (consecutive rows, wrapping around the split)."""
        return (np.arange(self.micro, dtype=np.int64) + index * self.micro) % len(self.shards)

    @torch.no_grad()
    def evaluate(self, engine) -> dict:
        """Mean masked-token loss and accuracy over `steps × world_size` batches (all ranks)."""
        engine.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=engine.device)
        counts = torch.zeros(2, dtype=torch.float64, device=engine.device)
        for i in range(self.steps):
            index = i * self.world_size + self.rank
            raw = self.shards.get_batch(self.batch_rows(index))
            batch = mask_batch(raw, EVAL_SPEC, mask_seed(self.seed + EVAL_SEED_OFFSET, 0, index, 0), self.vocab)
            out = engine(input_ids=batch.input_ids.to(engine.device), segment_ids=batch.segment_ids.to(engine.device),
                         labels=batch.labels.to(engine.device))
            loss_sum += out.loss.double() * out.num_masked.double()
            counts += torch.stack([out.num_masked.double(), out.num_correct.double()])
        engine.train()
        totals = torch.cat([loss_sum[None], counts])
        torch_dist.all_reduce(totals)
        loss, masked, correct = totals.tolist()
        return {"loss": loss / max(masked, 1), "mlm_accuracy": correct / max(masked, 1), "masked_tokens": int(masked)}
