"""Fused ops (attention, LayerNorm, ...) each beside its torch reference; reached via `kernels.dispatch`.

Depends only on torch (and triton where present), never on `engine`. Our distribution is named
`bioptimus-engine`, so `transformers`' probe for the unrelated PyPI `kernels` package finds no
version it accepts (tests/test_packaging.py checks this).
"""
