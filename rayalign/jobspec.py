"""Moved to :mod:`rayalign.jobs.jobspec`; this alias keeps ``import rayalign.jobspec`` working (same module object)."""

import sys

from rayalign.jobs import jobspec as _moved

sys.modules[__name__] = _moved
