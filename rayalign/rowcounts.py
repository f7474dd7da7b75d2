"""Moved to :mod:`rayalign.jobs.rowcounts`; this alias keeps ``import rayalign.rowcounts`` working (same module object)."""

import sys

from rayalign.jobs import rowcounts as _moved

sys.modules[__name__] = _moved
