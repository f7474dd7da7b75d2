"""Pieces every preference loss shares: the log-ratio difference, safety indicators, NLL.

Shapes: log-probabilities are ``[B]`` sequence sums over the response tokens (one value
per pair side); safety labels ``[B]`` bool or float with 1 = safe; token counts ``[B]``
integers (response tokens scored, ``label != IGNORE_INDEX``).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def log_ratio_difference(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """``h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))``, shape ``[B]``.

    How much more the policy prefers chosen over rejected than the reference does; 0 at
    the start of training (policy = reference), typically within ±50 nats afterwards.
    """
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def as_indicator(safe: Tensor, like: Tensor) -> Tensor:
    """Safety labels (bool or float, 1 = safe) as floats in ``like``'s dtype and device."""
    safe = torch.as_tensor(safe, device=like.device)
    return safe.to(like.dtype)


def chosen_nll(policy_chosen_logps: Tensor, chosen_token_counts: Tensor) -> Tensor:
    """Per-token negative log-likelihood of the chosen response, shape ``[B]``, ``>= 0``.

    Added to a preference loss with a small weight (as RPO does, Pang et al. 2024,
    arXiv:2404.19733) it counters DPO's likelihood displacement: without it the margin
    can grow by pushing *both* responses down, so the model unlearns the unsafe answer
    without learning the safe one. Empty responses count as one token.
    """
    return -policy_chosen_logps / chosen_token_counts.clamp(min=1).to(policy_chosen_logps.dtype)
