"""BERT encoder + MLM head with `transformers.BertForMaskedLM` state-dict names, working on unpadded tokens.

One forward serves both batch kinds:
- padded (`input_ids, attention_mask`, HF semantics: positions are column indices, rows attend within
  themselves), and
- packed (`input_ids, segment_ids`: 0 = pad, 1..k = segment of the row; positions restart per segment,
  token type 0, attention confined to each segment).
Both are unpadded once at encoder entry to (total_tokens, hidden) with int32 `cu_seqlens`, so no
FLOP is spent on padding, and the MLM head + cross-entropy run only at positions whose label is not
-100. Attention and LayerNorm go through `kernels.dispatch`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from engine.bert.config import BertConfig
from engine.bert.padding import TokenLayout, packed_layout, padded_layout, repad, unpad
from kernels import dispatch


IGNORE_INDEX = -100


class BertInputError(ValueError):
    """Inputs the model cannot run on (shapes, id ranges, conflicting masks); the message names them."""


class MLMOutput(NamedTuple):
    """What a training step needs from the model; counts are tensors so nothing syncs until logged."""

    loss: torch.Tensor
    """fp32 scalar: mean cross-entropy over masked tokens (0, still differentiable, when none are masked)."""
    num_masked: torch.Tensor
    """int64 scalar: number of positions with a label."""
    num_correct: torch.Tensor
    """int64 scalar: masked positions whose arg-max prediction equals the label."""
    logits: torch.Tensor | None = None
    """[num_masked, vocab_size] logits at the masked positions in row-major order, if asked for."""


class LayerNorm(nn.Module):
    """LayerNorm with HF parameter names (`weight`, `bias`) that runs through the kernel dispatch;
    given a residual it computes `LayerNorm(dropout(x) + residual)` as one (fusable) op. Fused
    ops read their weights inside the owning module's forward, so ZeRO-3 has gathered them."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
        if residual is None and dropout_p == 0.0:
            return dispatch.layer_norm(x, self.weight, self.bias, self.eps)
        return dispatch.residual_layer_norm(x, residual, self.weight, self.bias, self.eps, dropout_p)


class LinearGelu(nn.Linear):
    """`gelu(linear(x))` (exact GELU) with nn.Linear's parameters, through the kernel dispatch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.linear_gelu(x, self.weight, self.bias)


class MLMDecoder(nn.Linear):
    """The vocabulary projection; given targets it returns the MLM loss instead, which the
    dispatch may compute without ever forming the whole logits (weights read in this forward, so
    ZeRO-3 has gathered them)."""

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, valid_vocab: int = 0,
                need_logits: bool = False):
        if targets is None:
            return super().forward(x)
        return dispatch.mlm_loss(x, self.weight, self.bias, targets, valid_vocab, need_logits)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(
        self, ids: torch.Tensor, position_ids: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """ids, position_ids, token_type_ids [T] -> [T, hidden]; token type 0 when None."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        # every table is read through its module call, so ZeRO-3 gathers each one's weights
        x = self.word_embeddings(ids) + self.position_embeddings(position_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_dropout
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """[T, hidden] -> context [T, hidden], attention within each cu_seqlens sequence."""
        shape = (x.shape[0], self.num_heads, self.head_dim)
        q, k, v = (proj(x).view(shape) for proj in (self.query, self.key, self.value))
        dropout_p = self.dropout_p if self.training else 0.0
        context = dispatch.attention_varlen(
            q, k, v, layout.cu_seqlens, layout.max_seqlen, dropout_p=dropout_p, grid=layout.attention_grid
        )
        return context.reshape(x.shape[0], -1)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> + residual -> LayerNorm: the end of the attention block (input width
    hidden) and of the feed-forward block (input width intermediate), one module for both
    (`transformers` names them BertSelfOutput / BertOutput; the parameter names are the same)."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # dropout + add + LayerNorm is one op, so the dispatch can run it as one fused kernel
        return self.LayerNorm(self.dense(x), residual, self.dropout.p if self.training else 0.0)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, x: torch.Tensor, layout: TokenLayout, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[T, hidden] -> [T, hidden], or [len(rows), hidden] when only `rows` are needed afterwards
        (attention still reads every token as keys/values)."""
        context = self.self(x, layout)
        if rows is not None:
            context, x = context.index_select(0, rows), x.index_select(0, rows)
        return self.output(context, x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = LinearGelu(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, layout: TokenLayout, rows: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention(x, layout, rows)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(self, x: torch.Tensor, layout: TokenLayout, output_rows: torch.Tensor | None = None) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]; with `output_rows` [N] -> [N, hidden] for those tokens only.

        Only the last layer's outputs at `output_rows` are needed then, so its attention-output
        projection and feed-forward block run on those rows alone (for MLM: ~15% of tokens).
        """
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            x = layer(x, layout, output_rows if i == last else None)
        return x


class BertModel(nn.Module):
    """Embeddings + encoder on unpadded tokens (no pooler: MLM pre-training does not use it)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(
        self,
        ids: torch.Tensor,
        layout: TokenLayout,
        token_type_ids: torch.Tensor | None,
        output_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unpadded ids [T] -> hidden states [T, hidden] (or [N, hidden] at `output_rows` [N])."""
        x = self.embeddings(ids, layout.position_ids, token_type_ids)
        return self.encoder(x, layout, output_rows)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = LinearGelu(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = MLMDecoder(config.hidden_size, config.padded_vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.padded_vocab_size))
        self.decoder.bias = self.bias  # one bias under both HF names, as in transformers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, padded_vocab_size]."""
        return self.decoder(self.transform(x))

    def loss(self, x: torch.Tensor, targets: torch.Tensor, valid_vocab: int, need_logits: bool = False):
        """Masked rows [N, hidden] and their labels [N] -> (loss, num_correct, logits or None)."""
        return self.decoder(self.transform(x), targets, valid_vocab, need_logits)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertForMaskedLM(nn.Module):
    """BERT + MLM head; `model(input_ids=, segment_ids=|attention_mask=, labels=) -> MLMOutput`.

    `encode(...)` gives hidden states [B, L, hidden] and `logits(...)` full logits [B, L, vocab_size]
    (both zero at padding) for parity checks, distillation and fine-tuning.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertOnlyMLMHead(config)
        self.apply(self._init_weights)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Decoder shares the word-embedding matrix (as in BERT and `transformers`)."""
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def _init_weights(self, module: nn.Module) -> None:
        """The initialisation of `transformers` BERT; padded vocabulary rows and [PAD] start at zero."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module is self.bert.embeddings.word_embeddings:
                with torch.no_grad():
                    module.weight[self.config.vocab_size:].zero_()
                    module.weight[self.config.pad_token_id].zero_()
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictionHead):
            nn.init.zeros_(module.bias)

    # -- inputs ---------------------------------------------------------------------------------

    def _layout(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        segment_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> TokenLayout:
        """Check the inputs and compute where the real tokens are (a few host syncs: the number of
        tokens and segments decides tensor shapes)."""
        if input_ids.dim() != 2:
            raise BertInputError(f"input_ids: expected shape [batch, seq_len], got {tuple(input_ids.shape)}")
        if attention_mask is not None and segment_ids is not None:
            raise BertInputError("pass either attention_mask (padded batch) or segment_ids (packed batch), not both")
        if segment_ids is not None and token_type_ids is not None:
            raise BertInputError("token_type_ids: not used with segment_ids (packed segments are all type 0)")
        optional = (("attention_mask", attention_mask), ("segment_ids", segment_ids), ("token_type_ids", token_type_ids))
        for name, t in optional:
            if t is not None and t.shape != input_ids.shape:
                raise BertInputError(f"{name}: shape {tuple(t.shape)} differs from input_ids {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise BertInputError(f"input_ids: expected an integer tensor, got {input_ids.dtype}")
        if input_ids.numel() == 0:
            raise BertInputError(f"input_ids: empty batch of shape {tuple(input_ids.shape)}")
        extremes = [input_ids.min(), input_ids.max()]
        if segment_ids is not None:
            extremes.append(segment_ids.min())
        low, high, *segment_low = (int(v) for v in torch.stack(extremes).tolist())  # the one host sync
        if segment_low and segment_low[0] < 0:
            raise BertInputError("segment_ids: negative values (0 = padding, 1..k = segment)")
        if low < 0 or high >= self.config.vocab_size:
            raise BertInputError(
                f"input_ids: values must lie in [0, {self.config.vocab_size}), found [{low}, {high}]"
            )
        if token_type_ids is not None:
            low, high = (int(v) for v in torch.stack([token_type_ids.min(), token_type_ids.max()]).tolist())
            if low < 0 or high >= self.config.type_vocab_size:
                raise BertInputError(
                    f"token_type_ids: values must lie in [0, {self.config.type_vocab_size}), found [{low}, {high}]"
                )
        if segment_ids is not None:
            layout = packed_layout(segment_ids)
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            layout = padded_layout(attention_mask)
            if input_ids.shape[1] > self.config.max_position_embeddings:
                raise BertInputError(
                    f"input_ids: sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                    f"{self.config.max_position_embeddings}"
                )
        if layout.max_seqlen > self.config.max_position_embeddings:
            raise BertInputError(
                f"segment_ids: a segment of {layout.max_seqlen} tokens exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if layout.token_index.numel() == 0:
            raise BertInputError("attention_mask/segment_ids: the batch holds no real token (all padding)")
        return layout

    def _hidden(
        self, input_ids, attention_mask, segment_ids, token_type_ids, layout=None, output_rows=None
    ) -> tuple[torch.Tensor, TokenLayout]:
        if layout is None:
            layout = self._layout(input_ids, attention_mask, segment_ids, token_type_ids)
        ids = unpad(input_ids, layout.token_index)
        types = None if token_type_ids is None else unpad(token_type_ids, layout.token_index)
        return self.bert(ids, layout, types, output_rows), layout

    def _masked_positions(self, labels: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into the unpadded tokens that carry a label [M], and those labels [M]."""
        flat_labels = labels.reshape(-1)
        kept_labels = flat_labels.index_select(0, layout.token_index)
        masked = torch.nonzero(kept_labels != IGNORE_INDEX).squeeze(1)
        targets = kept_labels.index_select(0, masked)
        in_range = (targets >= 0) & (targets < self.config.vocab_size)
        num_labelled, num_bad = (int(v) for v in torch.stack(
            [(flat_labels != IGNORE_INDEX).sum(), (~in_range).sum()]).tolist())
        if num_labelled != masked.numel():
            raise BertInputError(f"labels: {num_labelled - masked.numel()} labelled position(s) fall on padding")
        if num_bad:
            raise BertInputError(f"labels: values must be -100 or lie in [0, {self.config.vocab_size})")
        return masked, targets

    # -- outputs --------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> MLMOutput:
        """MLM loss and accuracy counts over positions whose label is not -100 (labels [B, L])."""
        if labels is None or labels.shape != input_ids.shape:
            got = None if labels is None else tuple(labels.shape)
            raise BertInputError(f"labels: expected shape {tuple(input_ids.shape)} (-100 = not predicted), got {got}")
        layout = self._layout(input_ids, attention_mask, segment_ids, token_type_ids)
        masked, targets = self._masked_positions(labels, layout)
        hidden, _ = self._hidden(input_ids, None, None, token_type_ids, layout, output_rows=masked)
        loss, num_correct, logits = self.cls.predictions.loss(hidden, targets, self.config.vocab_size, return_logits)
        num_masked = torch.tensor(masked.numel(), device=loss.device)
        return MLMOutput(loss, num_masked, num_correct, logits[:, : self.config.vocab_size] if return_logits else None)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states [B, L, hidden] (zeros at padding)."""
        hidden, layout = self._hidden(input_ids, attention_mask, segment_ids, token_type_ids)
        return repad(hidden, layout.token_index, *input_ids.shape)

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MLM logits over the true vocabulary at every real token: [B, L, vocab_size] (zeros at padding)."""
        hidden, layout = self._hidden(input_ids, attention_mask, segment_ids, token_type_ids)
        logits = self.cls(hidden)[:, : self.config.vocab_size]
        return repad(logits, layout.token_index, *input_ids.shape)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied decoder counted once)."""
        return sum(p.numel() for p in self.parameters())


def count_parameters(config: BertConfig) -> int:
    """Parameters of `BertForMaskedLM(config)` without building it (for FLOP estimates and logs)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.padded_vocab_size
    embeddings = (v + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    head = h * h + h + 2 * h + v
    return embeddings + config.num_layers * layer + head
