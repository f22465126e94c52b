"""BIOptimus pre-training engine: corpus → vocabulary → shards → curriculum → BERT → export → NER.

See docs/architecture.md for the pipeline and which package owns each stage.
"""
__version__ = "0.1.0"
