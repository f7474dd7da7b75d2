"""IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", arXiv:2310.12036, eq. 17 (the sampled IPO loss)."""

from __future__ import annotations

from rayalign.losses.common import Tensor, log_ratio_difference


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """IPO: ``(h − 1/(2β))²`` per pair.

    Regresses ``h`` to a finite target instead of pushing it to infinity, which keeps
    the policy close to the reference when preferences are deterministic.

    Args: four ``[B]`` sequence log-probs; ``beta`` > 0 (IPO's τ), typically 0.01-1.
    Returns ``[B]``, ``>= 0``; ``1/(4β²)`` at the start (``h = 0``).
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return (h - 1.0 / (2.0 * beta)) ** 2
