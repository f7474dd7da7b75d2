"""Preference data: the canonical pair record, adapters, safety transforms, tokenization."""
