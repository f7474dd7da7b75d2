"""Moved to :mod:`rayalign.jobs.plan`; this alias keeps ``import rayalign.plan`` working (same module object)."""

import sys

from rayalign.jobs import plan as _moved

sys.modules[__name__] = _moved
