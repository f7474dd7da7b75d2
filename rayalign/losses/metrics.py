"""The DPO training metrics (implicit rewards, margins, accuracy), as combinable sums.

Implicit rewards are ``β·(log π − log π_ref)``; for a reference-free loss the training
loop passes zeros as the reference, so they are ``β·log π``.
"""

from __future__ import annotations

import torch

from rayalign.losses.common import Tensor, as_indicator


@torch.no_grad()
def preference_metric_sums(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_safe: Tensor | None = None,
    rejected_safe: Tensor | None = None,
    *,
    beta: float,
) -> dict[str, tuple[Tensor, Tensor]]:
    """The DPO training metrics as ``(sum, count)`` pairs of 0-dim float tensors.

    Sums, not means, so that micro-batches and workers combine exactly: the step's value
    of a metric is ``Σ sum / Σ count`` over every micro-batch of every worker, and a
    masked metric (``rewards/safe``, ``rewards/unsafe``) that no response of the step had
    has count 0 and no value at all, rather than a 0 that would pull the mean. Counts are
    pairs for the pair metrics and responses (chosen and rejected alike) for the safety ones.
    """
    reward_chosen = beta * (policy_chosen_logps - ref_chosen_logps).detach().float()
    reward_rejected = beta * (policy_rejected_logps - ref_rejected_logps).detach().float()
    margins = reward_chosen - reward_rejected
    pairs = torch.full((), float(margins.numel()), device=margins.device)
    sums = {
        "rewards/chosen": (reward_chosen.sum(), pairs),
        "rewards/rejected": (reward_rejected.sum(), pairs),
        "rewards/margins": (margins.sum(), pairs),
        "rewards/accuracy": ((margins > 0).float().sum(), pairs),
    }
    if chosen_safe is not None and rejected_safe is not None:
        rewards = torch.cat([reward_chosen, reward_rejected])
        safe = torch.cat([as_indicator(chosen_safe, rewards), as_indicator(rejected_safe, rewards)]) > 0.5
        zero = torch.zeros_like(rewards)
        sums["rewards/safe"] = (torch.where(safe, rewards, zero).sum(), safe.sum().float())
        sums["rewards/unsafe"] = (torch.where(~safe, rewards, zero).sum(), (~safe).sum().float())
    return sums


@torch.no_grad()
def preference_metrics(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_safe: Tensor | None = None,
    rejected_safe: Tensor | None = None,
    *,
    beta: float,
) -> dict[str, Tensor]:
    """The usual DPO training metrics of one batch, as 0-dim tensors (no host sync).

    Implicit rewards are ``β·(log π − log π_ref)``. With safety labels it also reports
    the mean implicit reward of safe and of unsafe responses (over chosen and rejected
    alike): the gap between them is what safety alignment should widen. A masked metric
    with nothing selected is NaN here; to combine batches use
    :func:`preference_metric_sums`, which the training loop does.
    """
    sums = preference_metric_sums(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_safe, rejected_safe, beta=beta,
    )
    return {
        name: total / count if count > 0 else torch.full_like(total, float("nan"))
        for name, (total, count) in sums.items()
    }
