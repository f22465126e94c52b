"""The one error type of distillation init: bad teacher, vocabulary, corpus or output folder."""
from __future__ import annotations


class DistillError(ValueError):
    """A problem with the user's inputs; its message is one line naming what and where."""
