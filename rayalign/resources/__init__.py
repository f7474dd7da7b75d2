"""Data files shipped inside the rayalign package (read them through importlib.resources)."""
