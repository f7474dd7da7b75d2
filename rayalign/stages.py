"""Moved to :mod:`rayalign.jobs.stages`; this alias keeps ``import rayalign.stages`` working (same module object)."""

import sys

from rayalign.jobs import stages as _moved

sys.modules[__name__] = _moved
