"""Calling a loss by name: :func:`preference_loss` and the NLL anchor :func:`anchor_nll`.

Both read the registry entry (:mod:`rayalign.losses.registry`), so nothing here changes
when a loss is added.
"""

from __future__ import annotations

import torch

from rayalign.losses.common import Tensor, as_indicator, chosen_nll
from rayalign.losses.registry import get_loss


def preference_loss(
    name: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    chosen_safe: Tensor | None = None,
    rejected_safe: Tensor | None = None,
    *,
    chosen_token_counts: Tensor | None = None,
    rejected_token_counts: Tensor | None = None,
    **hyperparameters: float,
) -> Tensor:
    """The per-pair loss ``[B]`` of the registered loss ``name``.

    Takes every input any loss may need and passes on those the entry declares
    (reference log-probs, safety labels, response token counts); a declared input that
    is missing raises ``ValueError``, as does an unknown loss. ``hyperparameters`` are
    keyword values such as ``beta=0.1, delta=10.0``: those of other losses are ignored,
    missing ones take the registry's defaults (the same as ``LossConfig``'s), out-of-range
    ones raise ``ValueError``.
    """
    spec = get_loss(name)
    inputs: dict[str, Tensor] = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
    }
    needed = {
        "ref_chosen_logps": (spec.needs_reference, ref_chosen_logps),
        "ref_rejected_logps": (spec.needs_reference, ref_rejected_logps),
        "chosen_safe": (spec.needs_safety_labels, chosen_safe),
        "rejected_safe": (spec.needs_safety_labels, rejected_safe),
        "chosen_token_counts": (spec.needs_token_counts, chosen_token_counts),
        "rejected_token_counts": (spec.needs_token_counts, rejected_token_counts),
    }
    for key, (wanted, value) in needed.items():
        if not wanted:
            continue
        if value is None:
            raise ValueError(f"loss {name!r} needs {key}")
        inputs[key] = value
    return spec.load()(**inputs, **spec.resolve(hyperparameters))


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

    Which one is the registry entry's ``anchor``: ``"chosen"`` (``dpo``, ``ipo``, ...: they
    know nothing of safety) or ``"safe"`` (``safedpo``, ``bfpo``): the chosen response if it
    is safe, else the rejected one if that is, else none. BFPO keeps pairs in helpfulness
    order, so on a harmful prompt the refusal it should learn is the rejected response;
    after SafeDPO's transformation the chosen one is always safe. An unknown loss raises
    ``ValueError``.
    """
    spec = get_loss(name)
    chosen = chosen_nll(policy_chosen_logps, chosen_token_counts)
    if spec.anchor == "chosen":
        return chosen
    if chosen_safe is None or rejected_safe is None:
        raise ValueError(f"{name}: anchor_nll needs chosen_safe and rejected_safe")
    rejected = chosen_nll(policy_rejected_logps, rejected_token_counts)
    c_safe, r_safe = as_indicator(chosen_safe, chosen), as_indicator(rejected_safe, chosen)
    return c_safe * chosen + (1.0 - c_safe) * r_safe * rejected


def anchor_weights(
    sft_weight: float,
    sft_weight_helpful: float | None,
    chosen_safe: Tensor,
    rejected_safe: Tensor,
    like: Tensor,
) -> Tensor:
    """Per-pair weight ``[B]`` of the NLL anchor (``loss.sft_weight``, ``loss.sft_weight_helpful``).

    The split is by the two safety labels, not by the prompt. A pair whose two responses
    are both labelled safe is decided by helpfulness alone (on the demo's benign prompts the
    anchor trains the helpful answer; an all-safe or helpfulness-stream pair, or a harmful
    prompt answered by two safe responses, counts too) and weighs ``sft_weight_helpful``;
    every other pair weighs ``sft_weight``: one unsafe response (on the demo's harmful
    prompts the anchored response is the refusal), or two, whose anchor
    (:func:`anchor_nll`) is 0 for the safety losses. Losses whose anchor is the chosen
    response (``dpo``, ``ipo``, ...) are split by the same labels.
    ``sft_weight_helpful=None`` weighs every pair ``sft_weight``.

    ``chosen_safe``/``rejected_safe``: ``[B]``, bool or 0/1. Returns ``[B]`` in ``like``'s
    dtype and device.
    """
    weights = torch.full_like(like, float(sft_weight))
    if sft_weight_helpful is None:
        return weights
    both = as_indicator(chosen_safe, like) * as_indicator(rejected_safe, like)
    return weights + both * (float(sft_weight_helpful) - float(sft_weight))
