"""The one error type the corpus readers raise; entry scripts turn it into a one-line exit."""


class CorpusError(ValueError):
    """A corpus that cannot be read: missing, empty, undecodable or malformed (message names where)."""
