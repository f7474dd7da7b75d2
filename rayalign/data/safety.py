"""Safety-aware transformations of helpfulness-ordered preference pairs.

Batches are columnar ``dict[str, numpy.ndarray]`` (Ray Data's default batch
format), so the same pure functions run in unit tests and inside ``map_batches``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Batch = dict[str, np.ndarray]

#: Columns whose values belong to the chosen / rejected side of a pair, swapped together.
PAIRED_COLUMNS = (
    ("chosen", "rejected"),
    ("chosen_safe", "rejected_safe"),
    ("chosen_input_ids", "rejected_input_ids"),
    ("chosen_labels", "rejected_labels"),
    ("ref_chosen_logps", "ref_rejected_logps"),
)


@dataclass(frozen=True)
class TransformCounts:
    """What the SafeDPO transformation did to a batch: every input row is in one bucket."""

    kept: int = 0
    swapped: int = 0
    dropped: int = 0

    def __add__(self, other: TransformCounts) -> TransformCounts:
        return TransformCounts(
            self.kept + other.kept, self.swapped + other.swapped, self.dropped + other.dropped
        )

    def as_dict(self) -> dict[str, int]:
        return {"kept": self.kept, "swapped": self.swapped, "dropped": self.dropped}


def safedpo_transform(batch: Batch) -> tuple[Batch, TransformCounts]:
    """SafeDPO's transformation (Kim et al.) of helpfulness-ordered pairs.

    - safe vs safe: keep the helpfulness order;
    - one safe, one unsafe: the safe response becomes ``chosen`` (swapping if needed);
    - unsafe vs unsafe: drop the pair (neither should be reinforced).

    Every column named in :data:`PAIRED_COLUMNS` that is present is swapped together,
    so tokenized and reference-scored batches stay consistent.
    """
    chosen_safe = np.asarray(batch["chosen_safe"]).astype(bool)
    rejected_safe = np.asarray(batch["rejected_safe"]).astype(bool)
    swap = ~chosen_safe & rejected_safe
    keep = chosen_safe | rejected_safe

    out: Batch = {}
    for name, column in batch.items():
        out[name] = np.asarray(column)
    for chosen_col, rejected_col in PAIRED_COLUMNS:
        if chosen_col in out and rejected_col in out:
            chosen, rejected = out[chosen_col], out[rejected_col]
            out[chosen_col] = _where_rows(swap, rejected, chosen)
            out[rejected_col] = _where_rows(swap, chosen, rejected)
    out = {name: column[keep] for name, column in out.items()}

    counts = TransformCounts(
        kept=int((keep & ~swap).sum()), swapped=int(swap.sum()), dropped=int((~keep).sum())
    )
    return out, counts


def _where_rows(condition: np.ndarray, if_true: np.ndarray, if_false: np.ndarray) -> np.ndarray:
    """Row-wise select that also works for object columns (strings, ragged token lists)."""
    result = np.array(if_false, copy=True)
    result[condition] = if_true[condition]
    return result
