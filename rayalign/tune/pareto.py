"""Multi-objective analysis of finished trials: Pareto-optimal set and best per objective.

Pure pandas: a sweep's result table in, boolean masks and rows out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _oriented(table: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> np.ndarray:
    """Metric matrix with every objective turned into 'larger is better'."""
    if len(metrics) != len(modes):
        raise ValueError("give one mode (max or min) per metric")
    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise KeyError(f"metrics not in the results: {missing}; columns: {list(table.columns)}")
    signs = np.array([1.0 if mode == "max" else -1.0 for mode in modes])
    return table[list(metrics)].to_numpy(dtype=float) * signs


def pareto_mask(table: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> np.ndarray:
    """True for rows no other row dominates (at least as good everywhere, better somewhere).

    Rows with a missing metric (failed trials) are never on the front.
    """
    values = _oriented(table, metrics, modes)
    valid = ~np.isnan(values).any(axis=1)
    mask = np.zeros(len(table), dtype=bool)
    for i in np.flatnonzero(valid):
        others = values[valid]
        dominated = ((others >= values[i]).all(axis=1) & (others > values[i]).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def best_per_objective(table: pd.DataFrame, metrics: Sequence[str], modes: Sequence[str]) -> dict[str, dict]:
    """For each metric, the row (as a dict) that optimises it alone."""
    values = _oriented(table, metrics, modes)
    best = {}
    for column, metric in enumerate(metrics):
        scores = values[:, column]
        if np.isnan(scores).all():
            continue
        best[metric] = table.iloc[int(np.nanargmax(scores))].to_dict()
    return best
