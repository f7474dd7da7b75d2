"""Moved to :mod:`rayalign.jobs.jobclient`; this alias keeps ``import rayalign.jobclient`` working (same module object)."""

import sys

from rayalign.jobs import jobclient as _moved

sys.modules[__name__] = _moved
