"""CUDA paths: torch's flash varlen kernel agrees with the SDPA reference; the model in bf16 keeps packed == alone."""
from __future__ import annotations

import pytest
import torch

from engine.bert import BertForMaskedLM, preset
from kernels import dispatch
from kernels.attention import attention_varlen_ref, flash_varlen_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_flash_varlen_matches_the_sdpa_reference_in_bf16():
    if not flash_varlen_available():
        pytest.skip("this torch has no torch.nn.attention.varlen")
    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = [37, 128, 5, 64, 1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(sum(lengths), 12, 64, device="cuda", generator=g, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    out = dispatch.attention_varlen(q, k, v, cu, 128)
    ref = attention_varlen_ref(*(t.float() for t in (q, k, v)), cu, 128)
    assert (out.float() - ref).abs().max() < 2e-2
    out.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_packed_bf16_model_on_cuda_gives_each_segment_its_alone_output():
    torch.manual_seed(0)
    model = BertForMaskedLM(preset("tiny", vocab_size=1000, attention_dropout=0.0)).cuda().bfloat16().eval()
    lengths = [[40, 60, 28], [100]]
    ids = torch.zeros(2, 128, dtype=torch.long, device="cuda")
    segment_ids = torch.zeros_like(ids)
    pieces = []
    for row, segs in enumerate(lengths):
        start = 0
        for k, n in enumerate(segs, start=1):
            tokens = torch.randint(1, 1000, (n,), device="cuda")
            ids[row, start:start + n], segment_ids[row, start:start + n] = tokens, k
            pieces.append((row, start, tokens))
            start += n
    with torch.no_grad():
        packed = model.encode(ids, segment_ids=segment_ids).float()
        for row, start, tokens in pieces:
            alone = model.encode(tokens[None])[0].float()
            assert (packed[row, start:start + len(tokens)] - alone).abs().max() < 5e-2
