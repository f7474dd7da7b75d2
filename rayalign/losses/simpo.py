"""SimPO: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
Reward", arXiv:2405.14734, eq. 6."""

from __future__ import annotations

import torch.nn.functional as F

from rayalign.losses.common import Tensor


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_token_counts: Tensor,
    rejected_token_counts: Tensor,
    *,
    beta: float,
    gamma: float,
) -> Tensor:
    """SimPO: ``−log σ(β/|y_c|·log π(y_c) − β/|y_r|·log π(y_r) − γ)`` per pair.

    Reference-free: the implicit reward is the policy's *average* log-likelihood per
    response token, scaled by ``β``, which matches how generation ranks responses and
    removes DPO's bias towards long responses; ``γ`` is the margin the chosen response's
    reward must exceed the rejected one's by.

    Args: ``[B]`` policy sequence log-probs of chosen and rejected (sums over response
    tokens); ``[B]`` response token counts (clamped to >= 1); ``beta`` > 0 (the paper
    uses 2-10), ``gamma`` >= 0 (0.3-1.6). Returns ``[B]``, ``>= 0``.
    """
    chosen = policy_chosen_logps / chosen_token_counts.clamp(min=1).to(policy_chosen_logps.dtype)
    rejected = policy_rejected_logps / rejected_token_counts.clamp(min=1).to(policy_rejected_logps.dtype)
    return -F.logsigmoid(beta * (chosen - rejected) - gamma)
