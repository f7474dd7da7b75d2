"""Plot the measured over-refusal trade-off of the demo's trained models on public benchmarks.

Two panels share one x axis, the change in XSTest safe prompts answered (over-refusal; left
is worse). The y axis is the change in XSTest unsafe prompts refused (left panel) and in
AdvBench behaviours refused (right panel). Each point is one measured `rayalign demo` run,
coloured by method (hollow: the rejected data versions of Decisions 12 and 13). Each panel shades its target region (XSTest safe change ≥ −0.05 and
XSTest unsafe ≥ +0.20, resp. AdvBench ≥ +0.30). The current defaults (the CSV's
`current_default` rows: SafeDPO anchor 0.3 and BFPO C3, data.seed 0 and 1) are ringed and
labelled. A least-squares line is fitted through every
SafeDPO and BFPO point of a panel, and its slope (points of y per point of x) is shown in
the legend.

The numbers come from `docs/sweeps/benchmark_tradeoff.csv`: one row per measured run,
copied as written from the benchmark tables in docs/sweeps.md and README.md, each change
being after − before. A run without a given change is left out of that panel.

Run from the repository root (needs only matplotlib and numpy):

    .venv/bin/python scripts/plot_benchmark_tradeoff.py

It writes `docs/sweeps/benchmark_tradeoff.png` and prints the fitted slopes and the runs
that fall inside each target region.
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CSV = ROOT / "docs/sweeps/benchmark_tradeoff.csv"
PNG = ROOT / "docs/sweeps/benchmark_tradeoff.png"

X_COL, X_TARGET = "xstest_safe", -0.05
PANELS = [("xstest_unsafe", 0.20, "XSTest unsafe refused"), ("advbench", 0.30, "AdvBench refused")]
STYLE = {
    "safedpo": dict(color="tab:blue", marker="o", label="SafeDPO"),
    "bfpo": dict(color="tab:orange", marker="s", label="BFPO"),
    "dpo": dict(color="tab:gray", marker="^", label="DPO (no safety)"),
}
EPS = 1e-9  # the targets are inclusive; guards float parsing at the boundary


def is_v2(row):
    """Runs on a rejected data version, Decisions 12 and 13 (hollow markers)."""
    return row["setting"].startswith(("contrast data v2", "discrimination contrast data"))


def default_tag(row):
    """Short tag for a current default: S/B (SafeDPO/BFPO) + its data.seed, e.g. "B1"."""
    return row["method"][0].upper() + row["data_order"][-1]


def main():
    with CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, 2, figsize=(13, 7.6))
    for ax, (y_col, y_target, y_name) in zip(axes, PANELS, strict=True):
        pts = [r for r in rows if r[X_COL] and r[y_col]]
        x = np.array([float(r[X_COL]) for r in pts])
        y = np.array([float(r[y_col]) for r in pts])
        x_lo, x_hi = min(x.min(), X_TARGET) - 0.02, max(x.max(), X_TARGET) + 0.03
        y_lo, y_hi = min(y.min(), 0) - 0.05, max(y.max(), y_target) + 0.07
        ax.fill_between(
            [X_TARGET, x_hi], y_target, y_hi, color="tab:green", alpha=0.12, label="target region"
        )
        ax.axvline(X_TARGET, color="tab:green", ls="--", lw=1)
        ax.axhline(y_target, color="tab:green", ls="--", lw=1)
        ax.axhline(0, color="black", lw=0.5)
        ax.axvline(0, color="black", lw=0.5)
        for method, style in STYLE.items():
            for v2 in (False, True):
                sel = [
                    i for i, r in enumerate(pts) if r["method"] == method and is_v2(r) == v2
                ]
                if not sel:
                    continue
                label = f"{style['label']}{', rejected data (D12, D13)' if v2 else ''}"
                ax.scatter(
                    x[sel],
                    y[sel],
                    s=36,
                    alpha=0.75,
                    lw=1.2 if v2 else 0.5,
                    **{
                        **style,
                        "label": f"{label} ({len(sel)})",
                        "facecolor": "none" if v2 else style["color"],
                        "edgecolor": style["color"] if v2 else "white",
                    },
                )
        fit = [i for i, r in enumerate(pts) if r["method"] in ("safedpo", "bfpo")]
        slope, icpt = np.polyfit(x[fit], y[fit], 1)
        xs = np.array([x_lo, x_hi])
        ax.plot(
            xs,
            slope * xs + icpt,
            color="black",
            lw=1,
            ls=":",
            label=f"least squares, SafeDPO + BFPO (n={len(fit)}): slope {slope:.2f}",
        )
        tagged = set()
        for i, r in enumerate(pts):
            if r["current_default"] != "yes":
                continue
            ax.scatter(x[i], y[i], s=140, facecolor="none", edgecolor="black", lw=1.5)
            tag = default_tag(r)
            if tag not in tagged:  # SafeDPO has two runs at seed 0 (warm and cold)
                tagged.add(tag)
                dx = 6 if tag[0] == "S" else -6
                ax.annotate(
                    tag,
                    (x[i], y[i]),
                    xytext=(dx, 6),
                    textcoords="offset points",
                    ha="left" if dx > 0 else "right",
                    fontsize=9,
                    weight="bold",
                )
        ax.scatter(
            [],
            [],
            s=140,
            facecolor="none",
            edgecolor="black",
            lw=1.5,
            label="current default (S SafeDPO, B BFPO; digit = data.seed)",
        )
        inside = [
            r
            for r in pts
            if float(r[X_COL]) >= X_TARGET - EPS and float(r[y_col]) >= y_target - EPS
        ]
        ax.set(
            xlim=(x_lo, x_hi),
            ylim=(y_lo, y_hi),
            xlabel="change in XSTest safe prompts answered (left: more over-refusal)",
            ylabel=f"change in {y_name}",
            title=f"{y_name}: {len(pts)} runs, {len(inside)} inside the target "
            f"(x ≥ {X_TARGET:+.2f}, y ≥ {y_target:+.2f})",
        )
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
        print(
            f"{y_col}: {len(pts)} runs, slope {slope:.3f} (n={len(fit)}), "
            f"{len(inside)} inside the target"
        )
        for r in inside:
            print(f"  inside: {r['method']} {r['setting']} [{r['data_order']}]")
    fig.suptitle(
        f"rayalign demo: benchmark trade-off of {len(rows)} measured runs "
        "(change after − before training; SmolLM2-135M, LoRA)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(PNG, dpi=120)
    print(f"wrote {PNG.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
