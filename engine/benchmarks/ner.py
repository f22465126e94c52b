"""NER fine-tuning benchmark: our evaluator vs `transformers.Trainer` on the same unit (see engine.ner.benchmark)."""
from engine.ner.benchmark import add_arguments, run  # noqa: F401  (the subcommand's two entry points)
