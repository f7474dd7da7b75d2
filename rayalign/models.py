"""Moved to :mod:`rayalign.modeling.models`; this alias keeps ``import rayalign.models`` working (same module object)."""

import sys

from rayalign.modeling import models as _moved

sys.modules[__name__] = _moved
