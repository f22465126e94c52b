"""Corpus stage: streaming readers (txt folder, JSONL, PubMed XML), normalisation, demo corpus."""
