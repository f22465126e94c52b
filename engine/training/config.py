"""The pre-training run config: one typed dataclass per section, file + `--section.key=value`.

Every section validates its own fields in `__post_init__`; checks that need two sections or the
world size (global batch, ZeRO fit, shards vs model) live in `engine.training.setup`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.bert.config import BertConfig
from engine.curriculum.schedule import CurriculumConfig


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value!r}")


@dataclass
class ModelSection:
    """The architecture: a preset or an HF folder, then any BertConfig field set here (`--model.<field>`).

    A field left at None keeps the preset's (or the init folder's) value, except `vocab_size`,
    which follows the shards' vocabulary for a preset; see `engine.training.setup.model_config_for`.
    """

    preset: str = "tiny"  # engine.bert preset name (tiny, minilm-l6-h384, bert-base, bert-large)
    init_from: Path | None = None  # HF BERT folder to start from (its config replaces the preset)
    compile: bool = False  # torch.compile each transformer layer in place (fuses the elementwise ops; GPU speed)
    kernels: Literal["reference", "auto", "fused"] = "reference"  # kernels.dispatch backend: torch ops, fused where they apply, or fused forced (raises where none applies); BIOPTIMUS_KERNELS overrides
    overrides: dict[str, Any] = field(default_factory=dict)  # same fields as a JSON table (older spelling)
    vocab_size: int | None = None  # default: the shards' vocabulary (init_from: the folder's); must match the shards
    hidden_size: int | None = None  # width of every token representation
    num_layers: int | None = None  # transformer encoder layers
    num_heads: int | None = None  # attention heads per layer; must divide hidden_size
    intermediate_size: int | None = None  # width of the feed-forward block
    max_position_embeddings: int | None = None  # longest segment the position table covers
    type_vocab_size: int | None = None  # token-type embeddings
    layer_norm_eps: float | None = None  # LayerNorm epsilon
    hidden_dropout: float | None = None  # dropout after embeddings, attention output and feed-forward output
    attention_dropout: float | None = None  # dropout on attention probabilities (0 allows flash varlen on CUDA)
    initializer_range: float | None = None  # std of the normal init of fresh weights
    pad_vocab_to_multiple: int | None = None  # embedding/decoder rows rounded up to this multiple (1 = off)
    pad_token_id: int | None = None  # id of [PAD]

    def __post_init__(self):
        known = set(architecture_field_names())
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ValueError(f"model.overrides: unknown field(s) {unknown} (known: {sorted(known)})")
        clash = sorted(k for k, v in self.overrides.items() if getattr(self, k) is not None and getattr(self, k) != v)
        if clash:
            raise ValueError(f"model.{clash[0]}={getattr(self, clash[0])!r} contradicts "
                             f"model.overrides {clash[0]}={self.overrides[clash[0]]!r}")

    def architecture_fields(self) -> dict[str, Any]:
        """The BertConfig fields this section sets explicitly (fields and `overrides` together)."""
        explicit = {name: getattr(self, name) for name in architecture_field_names() if getattr(self, name) is not None}
        return {**self.overrides, **explicit}


def architecture_field_names() -> list[str]:
    """Every BertConfig field, each of which ModelSection can set."""
    return [f.name for f in dataclasses.fields(BertConfig)]


@dataclass
class DataSection:
    shards: Path = Path("runs/demo/shards")  # shard folder written by engine/prepare_data.py
    prefetch: int = 2  # batches assembled and masked ahead of compute

    def __post_init__(self):
        if self.prefetch < 0:
            raise ValueError(f"data.prefetch must be >= 0, got {self.prefetch}")


@dataclass
class OptimSection:
    name: Literal["adamw", "lamb"] = "adamw"  # optimizer
    lr: float = 1e-4  # peak learning rate, reached at the end of warm-up
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/LAMB moment decay rates
    eps: float = 1e-6  # Adam/LAMB denominator epsilon
    weight_decay: float = 0.01  # decoupled weight decay (not applied to biases and LayerNorm)
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many optimizer steps
    decay: Literal["linear", "cosine", "constant"] = "linear"  # shape of the decay after warm-up
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak lr
    grad_clip: float = 1.0  # global gradient-norm clipping threshold (0 = off)

    def __post_init__(self):
        _positive("optim", lr=self.lr, eps=self.eps)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("optim.weight_decay, optim.warmup_steps and optim.grad_clip must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class BatchSection:
    micro: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    global_batch: int | None = None  # when set, must equal micro × grad_accum × data-parallel ranks

    def __post_init__(self):
        _positive("batch", micro=self.micro, grad_accum=self.grad_accum)
        if self.global_batch is not None:
            _positive("batch", global_batch=self.global_batch)


@dataclass
class DeepSpeedSection:
    config: Path = Path("ds_configs/zero0_fp32_cpu.json")  # DeepSpeed JSON, completed in Python
    zero_stage: int | None = None  # replaces the file's zero_optimization.stage when set
    precision: Literal["from_file", "fp32", "bf16", "fp16"] = "from_file"  # replaces the file's precision
    offload_optimizer: bool | None = None  # ZeRO-Offload of optimizer state to CPU (None = as in file)
    offload_params: bool | None = None  # ZeRO-3 parameter offload to CPU (None = as in file)

    def __post_init__(self):
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")


@dataclass
class CheckpointSection:
    dir: Path | None = None  # where checkpoints go (default: <out_dir>/checkpoints)
    interval: int = 1000  # save every this many optimizer steps (and at the end)
    keep_last: int = 3  # complete checkpoints kept; older ones are deleted

    def __post_init__(self):
        _positive("checkpoint", interval=self.interval, keep_last=self.keep_last)


@dataclass
class LoggingSection:
    interval: int = 10  # log metrics every this many optimizer steps
    jsonl: bool = True  # write <out_dir>/metrics.jsonl
    tensorboard: bool = True  # write TensorBoard events under <out_dir>/tensorboard
    progress_bar: bool = True  # tqdm bar with ETA on rank 0

    def __post_init__(self):
        _positive("logging", interval=self.interval)


@dataclass
class EvalSection:
    interval: int = 500  # validation MLM loss every this many optimizer steps (0 = never)
    steps: int = 20  # validation micro-batches per rank per evaluation
    at_start: bool = False  # also before step 1 of a fresh run: where a continued pre-training starts from (a teacher's fresh MLM head)

    def __post_init__(self):
        if self.interval < 0:
            raise ValueError(f"eval.interval must be >= 0, got {self.interval}")
        _positive("eval", steps=self.steps)


@dataclass
class PretrainConfig:
    """The whole run: `engine/pretrain.py --config FILE --section.key=value ...` resolves into this."""

    out_dir: Path = Path("runs/pretrain")  # metrics.jsonl, TensorBoard events and (by default) checkpoints
    steps: int | None = None  # optimizer steps; None = the sum of the curriculum phases' own lengths
    seq_len: int | None = None  # sequence length of phases that do not set one (None = shortest shard set)
    seed: int = 1234  # model init, sampler order, masks and dropout all derive from it
    model: ModelSection = field(default_factory=ModelSection)  # architecture or HF folder to start from
    data: DataSection = field(default_factory=DataSection)  # packed shards
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)  # masking phases (engine.curriculum)
    optim: OptimSection = field(default_factory=OptimSection)  # optimizer and lr schedule
    batch: BatchSection = field(default_factory=BatchSection)  # micro batch and accumulation
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)  # ZeRO stage, precision, offload
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)  # interval, retention
    logging: LoggingSection = field(default_factory=LoggingSection)  # metrics sinks
    eval: EvalSection = field(default_factory=EvalSection)  # validation MLM loss

    def __post_init__(self):
        if self.steps is not None:
            _positive("run", steps=self.steps)
        if self.seq_len is not None:
            _positive("run", seq_len=self.seq_len)

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint.dir if self.checkpoint.dir is not None else self.out_dir / "checkpoints"
