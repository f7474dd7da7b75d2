"""Moved to :mod:`rayalign.modeling.hub`; this alias keeps ``import rayalign.hub`` working (same module object)."""

import sys

from rayalign.modeling import hub as _moved

sys.modules[__name__] = _moved
