"""Evaluation outputs: JSON (atomic), a Markdown report, PNG plots.

Plots: one bar chart per benchmark (harmless ratio and benign compliance for each model),
one per benchmark with several categories (each category's harmless ratio, or benign
compliance for benign categories, per model), and a harmless-vs-helpful scatter when
several models are compared, the trade-off that safety alignment moves along.
:func:`summary_lines` is the one-line-per-model console summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayalign import atomic


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, atomically (odd values as strings)."""
    return atomic.write_json(path, data, default=str)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One JSON object per line at ``path``, atomically."""
    return atomic.write_jsonl(path, rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_report(results: dict[str, Any]) -> str:
    """``results``: {"models": {label: {"metrics", "settings", ...}}, "win_rates": {...}}."""
    lines = ["# Safety evaluation", ""]
    models = results["models"]
    lines += ["## Summary", "", "| model | harmless ratio ↑ | benign compliance ↑ | over-refusal ↓ | prompts | errors |",
              "|---|---|---|---|---|---|"]
    for label, res in models.items():
        o = res["metrics"]["overall"]
        lines.append(f"| {label} | {_fmt(o['harmless_ratio'])} | {_fmt(o['benign_compliance'])} | "
                     f"{_fmt(o['over_refusal_ratio'])} | {o['n']} | {o['errors']} |")
    lines += ["", "## Per benchmark", ""]
    lines += ["| model | benchmark | harmful | benign | harmless ratio | benign compliance | "
              "mean ref. log-lik/token | undecided |", "|---|---|---|---|---|---|---|---|"]
    for label, res in models.items():
        for bench, m in res["metrics"]["per_benchmark"].items():
            lines.append(f"| {label} | {bench} | {m['n_harmful']} | {m['n_benign']} | {_fmt(m['harmless_ratio'])} | "
                         f"{_fmt(m['benign_compliance'])} | {_fmt(m.get('mean_reference_logprob'))} | "
                         f"{m.get('undecided', 0)} |")
    if results.get("win_rates"):
        lines += ["", "## Win rate against the baseline", "", "| model | ranker | n | win rate | wins | ties | losses |",
                  "|---|---|---|---|---|---|---|"]
        for label, w in results["win_rates"].items():
            lines.append(f"| {label} | {w['ranker']} | {w['n']} | {_fmt(w['win_rate'])} | {w['wins']} | "
                         f"{w['ties']} | {w['losses']} |")
    lines += ["", "## Per category", ""]
    for label, res in models.items():
        for bench, cats in res["metrics"]["per_category"].items():
            lines += [f"**{label} / {bench}**", "", "| category | n | harmless ratio | benign compliance |",
                      "|---|---|---|---|"]
            for cat, m in cats.items():
                lines.append(f"| {cat} | {m['n']} | {_fmt(m['harmless_ratio'])} | {_fmt(m['benign_compliance'])} |")
            lines.append("")
    first = next(iter(models.values()))
    lines += ["## Settings", "", f"- judge (harmful prompts): `{first['judge']}`",
              f"- refusal judge (benign prompts): `{first['refusal_judge']}`",
              f"- generation: `{json.dumps(first['generation'])}`", ""]
    lines += ["Harmless ratio: share of harmful prompts the judge found safe (refused or harmless). "
              "Benign compliance: share of benign prompts answered rather than refused "
              "(over-refusal = 1 - benign compliance). For benchmarks whose reference is a harmful "
              "target string (AdvBench), a *lower* reference log-likelihood is safer.", ""]
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in results["plots"]] + [""]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], output_dir: Path) -> list[Path]:
    """Bar chart per benchmark; scatter of harmless vs benign compliance for several models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir.mkdir(parents=True, exist_ok=True)
    models = results["models"]
    benchmarks = sorted({b for res in models.values() for b in res["metrics"]["per_benchmark"]})
    paths = []
    for bench in benchmarks:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        labels = list(models)
        width = 0.8 / max(len(labels), 1)
        for i, label in enumerate(labels):
            m = models[label]["metrics"]["per_benchmark"].get(bench, {})
            # a ratio with nothing decided has no bar (NaN), not a bar at 0
            values = [
                float("nan") if m.get(k) is None else m[k] for k in ("harmless_ratio", "benign_compliance")
            ]
            ax.bar([x + i * width for x in (0, 1)], values, width=width, label=label)
        ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in (0, 1)], ["harmless ratio", "benign compliance"])
        ax.set_ylim(0, 1.05)
        ax.set_title(bench)
        ax.legend(fontsize=8)
        paths.append(_save(plt, fig, output_dir / f"bar_{bench}.png"))
    paths += plot_categories(models, output_dir, plt)
    if len(models) > 1:
        fig, ax = plt.subplots(figsize=(5, 4))
        for label, res in models.items():
            o = res["metrics"]["overall"]
            x, y = o.get("benign_compliance"), o.get("harmless_ratio")
            if x is not None and y is not None:
                ax.scatter([x], [y], s=60, label=label, alpha=0.8)
        if ax.collections:  # a model whose judge never decided has no point to plot
            ax.legend(fontsize=8, loc="lower left")
        ax.set_xlabel("benign compliance (helpful) →")
        ax.set_ylabel("harmless ratio (safe) →")
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        paths.append(_save(plt, fig, output_dir / "harmless_vs_helpful.png"))
    return paths


def category_values(models: dict[str, Any], bench: str) -> tuple[list[str], dict[str, list[float | None]]]:
    """(category labels, model -> value per category) for one benchmark: a category's
    harmless ratio when it has harmful prompts, else its benign compliance (marked "(benign)")."""
    cats = sorted({c for res in models.values() for c in res["metrics"].get("per_category", {}).get(bench, {})})
    labels, values = [], {label: [] for label in models}
    for cat in cats:
        cells = {label: res["metrics"]["per_category"].get(bench, {}).get(cat, {}) for label, res in models.items()}
        harmful = any(c.get("harmless_ratio") is not None for c in cells.values())
        labels.append(cat if harmful else f"{cat} (benign)")
        for label, cell in cells.items():
            values[label].append(cell.get("harmless_ratio" if harmful else "benign_compliance"))
    return labels, values


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write (100 dpi) and close one figure; returns its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_categories(models: dict[str, Any], output_dir: Path, plt: Any) -> list[Path]:
    """A bar chart of per-category scores for every benchmark with more than one category."""
    paths = []
    benchmarks = sorted({b for res in models.values() for b in res["metrics"].get("per_category", {})})
    for bench in benchmarks:
        labels, values = category_values(models, bench)
        if len(labels) < 2:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) * len(models) + 2), 4))
        width = 0.8 / max(len(models), 1)
        for i, (label, vals) in enumerate(values.items()):
            ax.bar([x + i * width for x in range(len(labels))], [v if v is not None else 0.0 for v in vals],
                   width=width, label=label)
        ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(labels))], labels,
                      rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("harmless ratio (benign: compliance)")
        ax.set_title(f"{bench} by category")
        ax.legend(fontsize=8)
        paths.append(_save(plt, fig, output_dir / f"categories_{bench}.png"))
    return paths


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One console line per model (and per win rate): the headline numbers and their counts."""
    lines = []
    for label, res in results["models"].items():
        o = res["metrics"]["overall"]
        lines.append(
            f"{label}: harmless {_fmt(o['harmless_ratio'])} ({o['n_harmful']} harmful), benign compliance "
            f"{_fmt(o['benign_compliance'])} ({o['n_benign']} benign), over-refusal {_fmt(o['over_refusal_ratio'])}"
            + (f", {o['errors']} errors" if o.get("errors") else "")
            + (f", {o['undecided']} undecided" if o.get("undecided") else "")
        )
    for label, w in results.get("win_rates", {}).items():
        lines.append(f"{label} vs {w.get('baseline', 'baseline')}: win rate {_fmt(w['win_rate'])} "
                     f"({w['wins']}-{w['ties']}-{w['losses']}, {w['ranker']} ranker)")
    return lines


def write_report(results: dict[str, Any], output_dir: Path) -> dict[str, str]:
    """All report files; returns their paths by kind."""
    plots = plot_results(results, output_dir)
    results = {**results, "plots": [str(p) for p in plots]}
    metrics_path = write_json(output_dir / "metrics.json", results)
    report_path = output_dir / "report.md"
    atomic.write_text(report_path, markdown_report(results))
    return {"metrics": str(metrics_path), "report": str(report_path), "plots": [str(p) for p in plots]}
