"""Corpus stage: streaming readers (txt folder, JSONL, PubMed XML), normalisation, demo corpus."""
from engine.corpus.normalize import normalize_text, text_normalizer
from engine.corpus.readers import CorpusError, corpus_files, iter_documents

__all__ = ["CorpusError", "corpus_files", "iter_documents", "normalize_text", "text_normalizer"]
