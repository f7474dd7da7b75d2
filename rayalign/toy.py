"""The illustrative four-action experiment (BFPO paper, Section 3.4).

A context-free policy ``π = softmax(θ)`` over four actions starts at a uniform
reference. The preference data are all six action pairs ordered by helpfulness,
with per-action safety labels chosen so that helpfulness and safety conflict: the
most helpful action is unsafe. Each method trains with Adam on batches sampled with
replacement; the final action probabilities show which order each loss recovers.

Pure torch + numpy: no Ray, runs in seconds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rayalign.data.safety import safedpo_transform
from rayalign.losses import HYPERPARAMETERS, get_loss, preference_loss


@dataclass(frozen=True)
class Action:
    """One of the toy's four responses: how helpful it is and whether it is safe."""

    name: str
    helpfulness: int  # higher is more helpful
    safe: bool


#: Indexed so that the desired global order (safety first, then helpfulness) is 0 > 1 > 2 > 3.
ACTIONS = (
    Action("safe & helpful", helpfulness=3, safe=True),
    Action("safe & less helpful", helpfulness=2, safe=True),
    Action("unsafe & unhelpful", helpfulness=1, safe=False),
    Action("unsafe & helpful", helpfulness=4, safe=False),
)
GLOBAL_ORDER = (0, 1, 2, 3)
HELPFULNESS_ORDER = tuple(sorted(range(len(ACTIONS)), key=lambda i: -ACTIONS[i].helpfulness))
METHODS = ("dpo", "ipo", "bfpo", "safedpo")


@dataclass
class ToySettings:
    """The experiment's settings: β values, seeds, Adam steps and the losses' hyperparameters."""

    betas: tuple[float, ...] = (0.1, 0.5, 1.0)
    seeds: int = 5
    steps: int = 1800
    lr: float = 0.01
    batch_size: int = 32
    record_every: int = 10
    # the loss registry's defaults (the same as LossConfig's)
    delta: float = HYPERPARAMETERS["delta"].default
    b1: float = HYPERPARAMETERS["b1"].default
    alpha: float = HYPERPARAMETERS["alpha"].default


@dataclass
class ToyRun:
    """One method at one β: final probabilities per seed and the mean learning curve."""

    method: str
    beta: float
    final_probs: np.ndarray  # [seeds, actions]
    curve_steps: np.ndarray  # [points]
    curve_probs: np.ndarray  # [points, actions], mean over seeds
    pairs: int

    @property
    def mean_final(self) -> np.ndarray:
        """Final action probabilities, mean over seeds, shape ``[actions]``."""
        return self.final_probs.mean(axis=0)

    @property
    def order(self) -> tuple[int, ...]:
        """Actions from most to least probable (mean over seeds)."""
        return tuple(int(i) for i in np.argsort(-self.mean_final, kind="stable"))


@dataclass
class ToyResult:
    """Every (method, β) run of one experiment."""

    settings: ToySettings
    runs: list[ToyRun] = field(default_factory=list)

    def run(self, method: str, beta: float) -> ToyRun:
        """The run of ``method`` at ``beta`` (StopIteration if there is none)."""
        return next(r for r in self.runs if r.method == method and r.beta == beta)


def preference_pairs(method: str) -> dict[str, np.ndarray]:
    """All action pairs, the more helpful one as chosen; SafeDPO gets its transformation."""
    chosen, rejected = [], []
    for a, b in itertools.combinations(range(len(ACTIONS)), 2):
        better, worse = (a, b) if ACTIONS[a].helpfulness > ACTIONS[b].helpfulness else (b, a)
        chosen.append(better)
        rejected.append(worse)
    batch = {
        "chosen": np.array(chosen),
        "rejected": np.array(rejected),
        "chosen_safe": np.array([ACTIONS[i].safe for i in chosen]),
        "rejected_safe": np.array([ACTIONS[i].safe for i in rejected]),
    }
    if get_loss(method).safedpo_transform:
        batch, _ = safedpo_transform(batch)
    return batch


def train_method(method: str, beta: float, settings: ToySettings) -> ToyRun:
    """Train all seeds at once: Adam is element-wise, so a ``[seeds, 4]`` parameter with
    the per-seed losses summed is exactly ``seeds`` independent runs."""
    pairs = {k: torch.as_tensor(v) for k, v in preference_pairs(method).items()}
    num_pairs = len(pairs["chosen"])
    samples = torch.stack([
        torch.randint(num_pairs, (settings.steps, settings.batch_size),
                      generator=torch.Generator().manual_seed(seed))
        for seed in range(settings.seeds)
    ], dim=1)  # [steps, seeds, batch]
    logits = torch.zeros(settings.seeds, len(ACTIONS), requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=settings.lr)
    ref_logp = torch.full((settings.seeds * settings.batch_size,), -math.log(len(ACTIONS)))
    seed_rows = torch.arange(settings.seeds).repeat_interleave(settings.batch_size)

    curve_steps, curve_probs = [0], [torch.softmax(logits.detach(), -1).mean(0)]
    for step in range(settings.steps):
        idx = samples[step].reshape(-1)
        logp = torch.log_softmax(logits, dim=-1)
        loss = preference_loss(
            method,
            logp[seed_rows, pairs["chosen"][idx]],
            logp[seed_rows, pairs["rejected"][idx]],
            ref_logp,
            ref_logp,
            pairs["chosen_safe"][idx],
            pairs["rejected_safe"][idx],
            beta=beta,
            delta=settings.delta,
            b1=settings.b1,
            alpha=settings.alpha,
        )
        optimizer.zero_grad()
        loss.view(settings.seeds, settings.batch_size).mean(dim=1).sum().backward()
        optimizer.step()
        if (step + 1) % settings.record_every == 0 or step + 1 == settings.steps:
            curve_steps.append(step + 1)
            curve_probs.append(torch.softmax(logits.detach(), -1).mean(0))

    return ToyRun(
        method=method,
        beta=beta,
        final_probs=torch.softmax(logits.detach(), -1).numpy(),
        curve_steps=np.array(curve_steps),
        curve_probs=torch.stack(curve_probs).numpy(),
        pairs=num_pairs,
    )


def run_toy(settings: ToySettings | None = None, methods: tuple[str, ...] = METHODS) -> ToyResult:
    """Train every method at every β of ``settings`` (CPU, seconds)."""
    settings = settings or ToySettings()
    result = ToyResult(settings)
    for method in methods:
        for beta in settings.betas:
            result.runs.append(train_method(method, beta, settings))
    return result


def expected_outcome(run: ToyRun) -> tuple[str, bool]:
    """The paper-reported behaviour for ``run.method`` and whether this run shows it."""
    if run.method == "bfpo":
        return "global order", run.order == GLOBAL_ORDER
    if run.method == "safedpo":
        unsafe = sum(p for p, a in zip(run.mean_final, ACTIONS, strict=True) if not a.safe)
        return "unsafe ~ 0", bool(unsafe < 0.01)
    return "helpfulness order", run.order == HELPFULNESS_ORDER


def format_table(result: ToyResult) -> str:
    """Final action probabilities (mean over seeds) per method and β, with the check."""
    short = ["p(safe,help)", "p(safe,less)", "p(unsafe,unh)", "p(unsafe,help)"]
    header = f"{'method':<8} {'beta':>5}  " + "  ".join(f"{s:>14}" for s in short) + "  expected            ok"
    lines = [header, "-" * len(header)]
    for run in result.runs:
        expectation, ok = expected_outcome(run)
        probs = "  ".join(f"{p:>14.4f}" for p in run.mean_final)
        lines.append(f"{run.method:<8} {run.beta:>5.2f}  {probs}  {expectation:<18}  {'yes' if ok else 'NO'}")
    return "\n".join(lines)


def plot_curves(result: ToyResult, path: str | Path) -> Path:
    """Probability of each action vs step (mean over seeds): a row per β, a panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in result.runs))
    betas = list(result.settings.betas)
    fig, axes = plt.subplots(len(betas), len(methods), figsize=(3.6 * len(methods), 2.8 * len(betas)),
                             sharex=True, sharey=True, squeeze=False)
    for row, beta in enumerate(betas):
        for col, method in enumerate(methods):
            run, ax = result.run(method, beta), axes[row][col]
            for action_index, action in enumerate(ACTIONS):
                ax.plot(run.curve_steps, run.curve_probs[:, action_index], label=action.name,
                        linestyle="-" if action.safe else "--")
            ax.set_title(f"{method.upper()}  β={beta:g}", fontsize=10)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if row == len(betas) - 1:
                ax.set_xlabel("step")
            if col == 0:
                ax.set_ylabel("action probability")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Illustrative experiment: 4 actions, uniform reference (mean over seeds)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def result_as_json(result: ToyResult) -> dict:
    """The result as plain JSON: settings, and per run the final probabilities and curves."""
    return {
        "actions": [a.name for a in ACTIONS],
        "settings": vars(result.settings),
        "runs": [
            {
                "method": r.method,
                "beta": r.beta,
                "final_probs_mean": r.mean_final.round(6).tolist(),
                "final_probs_per_seed": r.final_probs.round(6).tolist(),
                "order": list(r.order),
                "expected": expected_outcome(r)[0],
                "matches_expected": expected_outcome(r)[1],
            }
            for r in result.runs
        ],
    }
