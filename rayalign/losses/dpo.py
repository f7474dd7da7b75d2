"""DPO: Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290, eq. 7."""

from __future__ import annotations

import torch.nn.functional as F

from rayalign.losses.common import Tensor, log_ratio_difference


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """DPO (arXiv:2305.18290, eq. 7): ``−log σ(β·h)`` per pair.

    The Bradley-Terry likelihood of the preference under the implicit reward
    ``β·log(π/π_ref)``; it never saturates, so ``h`` keeps growing on separable data.

    Args: four ``[B]`` sequence log-probs (sums over response tokens); ``beta`` > 0,
    typically 0.01-0.5. Returns ``[B]``, ``>= 0``; ``log 2 ≈ 0.693`` at the start
    (``h = 0``), linear in ``−β·h`` for confidently wrong pairs (never inf).
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return -F.logsigmoid(beta * h)
