"""Sweep figures: the safety/helpfulness Pareto front and per-hyperparameter sensitivity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row: pd.Series, params: Sequence[str]) -> str:
    parts = []
    for param in params:
        value = row.get(param)
        short = param.rsplit(".", 1)[-1]
        parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
    return ", ".join(parts)


def plot_pareto(
    table: pd.DataFrame,
    *,
    x: str,
    y: str,
    front: np.ndarray,
    params: Sequence[str],
    path: str | Path,
) -> Path:
    """Every trial as a point (x = helpfulness, y = harmlessness), the front joined by a line,
    each point labelled with its hyperparameters."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    ok = table[[x, y]].notna().all(axis=1)
    ax.scatter(table.loc[ok & ~front, x], table.loc[ok & ~front, y], color="tab:gray", label="trial")
    on_front = table[front].sort_values(x)
    ax.plot(on_front[x], on_front[y], "o-", color="tab:red", label="Pareto front")
    for _, row in table[ok].iterrows():
        ax.annotate(_label(row, params), (row[x], row[y]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title("Safety / helpfulness trade-off across the sweep")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_sensitivity(
    table: pd.DataFrame, *, param: str, metrics: Sequence[str], path: str | Path
) -> Path:
    """Each metric against one hyperparameter (mean over other settings), as the papers'
    Δ (SafeDPO) and α (BFPO) sensitivity figures."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    grouped = table.groupby(param)[list(metrics)].mean().sort_index()
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.plot(grouped.index, grouped[metric], "o-")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Sensitivity to {param}")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
