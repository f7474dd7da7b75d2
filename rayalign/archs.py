"""Moved to :mod:`rayalign.jobs.archs`; this alias keeps ``import rayalign.archs`` working (same module object)."""

import sys

from rayalign.jobs import archs as _moved

sys.modules[__name__] = _moved
