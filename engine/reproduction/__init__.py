"""The reproduction study of the recipe's two claims (`engine/study.py`): distillation init speeds up
pre-training, and the masking curriculum improves NER. Runs the real recipe pieces at a chosen size and
writes `study.json`; `report` turns that JSON (only that JSON) into `reproduction.md` and its plots."""
