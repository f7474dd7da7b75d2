"""Public safety benchmarks shipped with rayalign under their own licences (see README.md)."""
