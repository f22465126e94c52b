"""The one error type the NER stage raises for bad input; the CLI turns it into a one-line exit."""


class NerError(ValueError):
    """Bad NER input (data file, tag scheme, model folder, option); the message names file and line."""
