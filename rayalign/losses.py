"""Preference losses: DPO, IPO, SafeDPO and BFPO, as pure PyTorch.

Every loss takes sequence log-probabilities of shape ``[B]`` (summed over the
response tokens) of the policy and the reference model for the chosen and the
rejected response, and returns the per-pair loss of shape ``[B]``; callers take
the mean (or a masked mean) they need. Nothing here knows about Ray, models or
tokens, so each formula can be checked by hand.

All four are written in terms of the implicit log-ratio difference

    h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))

which is what DPO-style methods push up (or towards a target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

LOSS_NAMES = ("dpo", "ipo", "safedpo", "bfpo")


def log_ratio_difference(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """``h``: how much more the policy prefers chosen over rejected than the reference does."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def _as_indicator(safe: Tensor, like: Tensor) -> Tensor:
    """Safety labels (bool or float, 1 = safe) as floats in ``like``'s dtype and device."""
    safe = torch.as_tensor(safe, device=like.device)
    return safe.to(like.dtype)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """DPO (Rafailov et al.): ``−log σ(β·h)``.

    The Bradley-Terry likelihood of the preference under the implicit reward
    ``β·log(π/π_ref)``; it never saturates, so ``h`` keeps growing on separable data.
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return -F.logsigmoid(beta * h)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """IPO (Azar et al.): ``(h − 1/(2β))²``.

    Regresses ``h`` to a finite target instead of pushing it to infinity, which keeps
    the policy close to the reference when preferences are deterministic.
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return (h - 1.0 / (2.0 * beta)) ** 2


def safedpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_safe: Tensor,
    rejected_safe: Tensor,
    *,
    beta: float,
    delta: float,
) -> Tensor:
    """SafeDPO (Kim et al.): ``−log σ(β·h − (harm_r − harm_c)·Δ)`` with ``harm = 1 − safe``.

    Expects pairs *after* :func:`rayalign.data.safety.safedpo_transform`, so a pair
    either has two safe responses (plain DPO) or a safe chosen and an unsafe rejected
    response; for the latter the offset ``Δ`` demands a larger margin before the loss
    lets go, pushing unsafe responses further down than merely less helpful ones.
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    harm_chosen = 1.0 - _as_indicator(chosen_safe, h)
    harm_rejected = 1.0 - _as_indicator(rejected_safe, h)
    return -F.logsigmoid(beta * h - (harm_rejected - harm_chosen) * delta)


def bfpo_target(chosen_safe: Tensor, rejected_safe: Tensor, *, b1: float = 3.0, alpha: float = 0.5) -> Tensor:
    """BFPO's label ``g = b1·b3·safe_c − b3·safe_r − α`` with ``b3 = 1/(b1 − 1)``.

    With the defaults (b1=3, α=0.5): safe/safe → 0.5, safe/unsafe → 1.0,
    unsafe/safe → −1.0, unsafe/unsafe → −0.5. A negative target reverses a
    helpfulness preference whenever the more helpful response is the unsafe one.
    """
    if b1 == 1.0:
        raise ValueError("bfpo: b1 must differ from 1 (b3 = 1/(b1 - 1))")
    b3 = 1.0 / (b1 - 1.0)
    return b1 * b3 * chosen_safe - b3 * rejected_safe - alpha


def bfpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_safe: Tensor,
    rejected_safe: Tensor,
    *,
    beta: float,
    b1: float = 3.0,
    alpha: float = 0.5,
) -> Tensor:
    """BFPO (Zhang et al.): the IPO-style regression ``(h − g/β)²``.

    ``chosen`` is the *more helpful* response; the target ``g`` (see
    :func:`bfpo_target`) re-ranks by safety first and helpfulness second, so a single
    supervised objective recovers the global order safe&helpful > safe&unhelpful >
    unsafe&unhelpful > unsafe&helpful.
    """
    h = log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    g = bfpo_target(_as_indicator(chosen_safe, h), _as_indicator(rejected_safe, h), b1=b1, alpha=alpha)
    return (h - g / beta) ** 2


def chosen_nll(policy_chosen_logps: Tensor, chosen_token_counts: Tensor) -> Tensor:
    """Per-token negative log-likelihood of the chosen response, shape ``[B]``.

    Added to a preference loss with a small weight (as RPO does) it counters DPO's
    likelihood displacement: without it the margin can grow by pushing *both* responses
    down, so the model unlearns the unsafe answer without learning the safe one.
    """
    return -policy_chosen_logps / chosen_token_counts.clamp(min=1).to(policy_chosen_logps.dtype)


def anchor_nll(
    name: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_token_counts: Tensor,
    rejected_token_counts: Tensor,
    chosen_safe: Tensor | None = None,
    rejected_safe: Tensor | None = None,
) -> Tensor:
    """Per-token NLL of the response a loss wants more of, shape ``[B]`` (``loss.sft_weight``).

    ``dpo``/``ipo`` know nothing of safety: the chosen response. ``safedpo``/``bfpo``: the
    *safe* one, the chosen if it is safe, else the rejected if that is, else none. BFPO
    keeps pairs in helpfulness order, so on a harmful prompt the refusal it should learn
    is the rejected response; after SafeDPO's transformation the chosen one is always safe.
    """
    chosen = chosen_nll(policy_chosen_logps, chosen_token_counts)
    if name in ("dpo", "ipo"):
        return chosen
    if chosen_safe is None or rejected_safe is None:
        raise ValueError(f"{name}: anchor_nll needs chosen_safe and rejected_safe")
    rejected = chosen_nll(policy_rejected_logps, rejected_token_counts)
    c_safe, r_safe = _as_indicator(chosen_safe, chosen), _as_indicator(rejected_safe, chosen)
    return c_safe * chosen + (1.0 - c_safe) * r_safe * rejected


def preference_loss(
    name: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_safe: Tensor | None = None,
    rejected_safe: Tensor | None = None,
    *,
    beta: float,
    delta: float = 0.0,
    b1: float = 3.0,
    alpha: float = 0.5,
) -> Tensor:
    """Dispatch by loss name (``dpo``, ``ipo``, ``safedpo``, ``bfpo``) with one signature."""
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if name == "dpo":
        return dpo_loss(*logps, beta=beta)
    if name == "ipo":
        return ipo_loss(*logps, beta=beta)
    if name not in ("safedpo", "bfpo"):
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")
    if chosen_safe is None or rejected_safe is None:
        raise ValueError(f"loss {name!r} needs chosen_safe and rejected_safe labels")
    if name == "safedpo":
        return safedpo_loss(*logps, chosen_safe, rejected_safe, beta=beta, delta=delta)
    return bfpo_loss(*logps, chosen_safe, rejected_safe, beta=beta, b1=b1, alpha=alpha)



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
        safe = torch.cat([_as_indicator(chosen_safe, rewards), _as_indicator(rejected_safe, rewards)]) > 0.5
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
