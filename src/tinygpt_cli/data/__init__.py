"""Text to token ids: vocabularies, tokenizers, corpora, prepared datasets, batches."""
