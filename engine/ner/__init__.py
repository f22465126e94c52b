"""NER evaluation (BLURB protocol): CoNLL I/O, IOB checks, sub-piece windows, fine-tuning, scoring, report.

The entry script is `engine/evaluate_ner.py`; every piece here is importable and testable alone.
"""
