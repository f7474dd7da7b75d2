"""rayalign: safety alignment of language models (SafeDPO, BFPO) on Ray."""

__version__ = "0.1.0"
