"""Losses against values computed by hand, gradient directions, stability, dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from rayalign.losses import (
    bfpo_loss,
    bfpo_target,
    dpo_loss,
    ipo_loss,
    preference_loss,
    preference_metrics,
    safedpo_loss,
)

# One pair whose log-ratio difference is h = (-1 + 1.5) - (-2 + 1.5) = 1.0.
PC, PR, RC, RR = (torch.tensor([v], dtype=torch.float64) for v in (-1.0, -2.0, -1.5, -1.5))


def four(value: float) -> torch.Tensor:
    return torch.full((4,), value, dtype=torch.float64)


def test_dpo_matches_hand_value():
    # -log σ(0.5 · 1) = log(1 + e^-0.5)
    assert dpo_loss(PC, PR, RC, RR, beta=0.5).item() == pytest.approx(math.log1p(math.exp(-0.5)))
    assert dpo_loss(PC, PR, RC, RR, beta=0.5).item() == pytest.approx(0.474076984)


def test_ipo_matches_hand_value():
    assert ipo_loss(PC, PR, RC, RR, beta=0.5).item() == pytest.approx(0.0)  # target 1/(2·0.5) = 1 = h
    assert ipo_loss(PC, PR, RC, RR, beta=0.25).item() == pytest.approx(1.0)  # (1 - 2)²


@pytest.mark.parametrize(
    ("chosen_safe", "rejected_safe", "expected"),
    [
        (True, True, math.log1p(math.exp(-0.5))),  # no margin: plain DPO
        (True, False, math.log1p(math.exp(1.5))),  # margin Δ=2: -log σ(0.5 - 2)
        (False, True, math.log1p(math.exp(-2.5))),  # untransformed pair: -log σ(0.5 + 2)
        (False, False, math.log1p(math.exp(-0.5))),
    ],
)
def test_safedpo_margin_cases(chosen_safe, rejected_safe, expected):
    loss = safedpo_loss(PC, PR, RC, RR, torch.tensor([chosen_safe]), torch.tensor([rejected_safe]),
                        beta=0.5, delta=2.0)
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("chosen_safe", "rejected_safe", "target_g", "expected"),
    [
        (1.0, 1.0, 0.5, 0.0),  # target h = 0.5/0.5 = 1 = h
        (1.0, 0.0, 1.0, 1.0),  # target 2: (1 - 2)²
        (0.0, 1.0, -1.0, 9.0),  # target -2: (1 + 2)²
        (0.0, 0.0, -0.5, 4.0),  # target -1: (1 + 1)²
    ],
)
def test_bfpo_all_safety_combinations(chosen_safe, rejected_safe, target_g, expected):
    cs, rs = torch.tensor([chosen_safe]), torch.tensor([rejected_safe])
    assert bfpo_target(cs, rs).item() == pytest.approx(target_g)
    assert bfpo_loss(PC, PR, RC, RR, cs, rs, beta=0.5).item() == pytest.approx(expected)


def test_bfpo_custom_constants():
    # b1=2 -> b3=1: g = 2·safe_c - safe_r - α
    g = bfpo_target(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), b1=2.0, alpha=0.25)
    assert g.tolist() == pytest.approx([1.75, -1.25])
    with pytest.raises(ValueError, match="b1"):
        bfpo_target(torch.tensor([1.0]), torch.tensor([1.0]), b1=1.0)


def _grads(fn, *safety, **kw):
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    fn(pc, pr, RC, RR, *safety, **kw).sum().backward()
    return pc.grad.item(), pr.grad.item()


def test_gradients_point_the_right_way():
    up, down = _grads(dpo_loss, beta=0.5)
    assert up < 0 < down  # descending raises chosen, lowers rejected
    up, down = _grads(safedpo_loss, torch.tensor([True]), torch.tensor([False]), beta=0.5, delta=2.0)
    assert up < 0 < down
    # BFPO with an unsafe-but-more-helpful chosen response: its target is negative, so
    # descending must LOWER the chosen (unsafe) response and raise the rejected (safe) one.
    up, down = _grads(bfpo_loss, torch.tensor([0.0]), torch.tensor([1.0]), beta=0.5)
    assert up > 0 > down
    # IPO past its target pulls back.
    up, down = _grads(ipo_loss, beta=2.0)  # target 0.25 < h = 1
    assert up > 0 > down


@pytest.mark.parametrize("name", ["dpo", "ipo", "safedpo", "bfpo"])
def test_stable_for_extreme_log_ratios(name):
    pc = torch.tensor([1e4, -1e4, 0.0, 5e3], requires_grad=True)
    pr = torch.tensor([-1e4, 1e4, 0.0, -5e3], requires_grad=True)
    ref = torch.zeros(4)
    safe = torch.tensor([True, False, True, False])
    loss = preference_loss(name, pc, pr, ref, ref, safe, ~safe, beta=1.0, delta=5.0)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    if name in ("dpo", "safedpo"):
        assert loss[0].item() == pytest.approx(0.0, abs=1e-6)  # confidently right: no loss
        assert loss[1].item() == pytest.approx(2e4, rel=1e-3)  # confidently wrong: linear, not inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["dpo", "ipo", "safedpo", "bfpo"])
def test_dtype_and_shape_preserved(name, dtype):
    logps = [torch.randn(8, dtype=dtype) for _ in range(4)]
    safe = torch.rand(8) > 0.5  # bool labels are accepted as-is
    loss = preference_loss(name, *logps, safe, torch.ones(8, dtype=torch.bool), beta=0.1, delta=1.0)
    assert loss.shape == (8,) and loss.dtype == dtype


def test_preference_loss_dispatch_errors():
    with pytest.raises(ValueError, match="unknown loss"):
        preference_loss("kto", PC, PR, RC, RR, beta=0.1)
    with pytest.raises(ValueError, match="chosen_safe"):
        preference_loss("safedpo", PC, PR, RC, RR, beta=0.1)


def test_metrics_by_hand():
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    metrics = preference_metrics(pc, pr, rc, rr, torch.tensor([True, True]), torch.tensor([False, True]),
                                 beta=0.5)
    # rewards: chosen [0.25, -0.5], rejected [-0.25, 0.5]; margins [0.5, -1.0]
    assert metrics["rewards/chosen"].item() == pytest.approx(-0.125)
    assert metrics["rewards/rejected"].item() == pytest.approx(0.125)
    assert metrics["rewards/margins"].item() == pytest.approx(-0.25)
    assert metrics["rewards/accuracy"].item() == pytest.approx(0.5)
    assert metrics["rewards/safe"].item() == pytest.approx((0.25 - 0.5 + 0.5) / 3)
    assert metrics["rewards/unsafe"].item() == pytest.approx(-0.25)
    no_unsafe = preference_metrics(pc, pr, rc, rr, torch.ones(2, dtype=torch.bool),
                                   torch.ones(2, dtype=torch.bool), beta=0.5)
    assert math.isnan(no_unsafe["rewards/unsafe"].item())
    assert "rewards/safe" not in preference_metrics(pc, pr, rc, rr, beta=0.5)


def test_anchor_nll_follows_safety_for_safety_losses_only():
    from rayalign.losses import anchor_nll

    chosen, rejected = torch.tensor([-4.0, -4.0, -4.0, -4.0]), torch.tensor([-8.0, -8.0, -8.0, -8.0])
    counts = torch.tensor([2, 2, 2, 2])
    c_safe = torch.tensor([True, True, False, False])
    r_safe = torch.tensor([True, False, True, False])
    bfpo = anchor_nll("bfpo", chosen, rejected, counts, counts, c_safe, r_safe)
    # safe chosen -> chosen (2.0); unsafe chosen, safe rejected -> the refusal (4.0); neither -> 0
    assert bfpo.tolist() == pytest.approx([2.0, 2.0, 4.0, 0.0])
    assert anchor_nll("dpo", chosen, rejected, counts, counts, c_safe, r_safe).tolist() == [2.0] * 4
    with pytest.raises(ValueError, match="needs chosen_safe"):
        anchor_nll("safedpo", chosen, rejected, counts, counts)


def test_chosen_nll_is_per_token_and_raises_the_chosen_response():
    from rayalign.losses import chosen_nll

    logps = torch.tensor([-6.0, -2.0], requires_grad=True)
    nll = chosen_nll(logps, torch.tensor([3, 0]))
    assert nll.tolist() == pytest.approx([2.0, 2.0])  # empty responses count as one token
    nll.sum().backward()
    assert (logps.grad < 0).all()  # descending raises the chosen log-likelihood


def test_average_logps_turns_bfpo_into_a_per_token_regression():
    """loss.average_logps: h is the per-token log-ratio difference; the NLL anchor is unchanged."""
    from rayalign.config import Config
    from rayalign.logprobs import mean_token_logps
    from rayalign.train.loop import _pair_losses

    counts = torch.tensor([4, 10, 2, 5])  # chosen of pairs 0-1, then rejected of pairs 0-1
    policy = torch.tensor([-8.0, -30.0, -4.0, -5.0])
    ref = torch.tensor([-6.0, -20.0, -2.0, -10.0])
    assert mean_token_logps(policy, counts).tolist() == [-2.0, -3.0, -2.0, -1.0]
    assert mean_token_logps(torch.tensor([-3.0]), torch.tensor([0])).item() == -3.0  # 0 counts as 1
    batch = {"label_counts": counts, "chosen_safe": torch.tensor([False, True]),
             "rejected_safe": torch.tensor([True, True])}
    cfg = Config.model_validate({"model": {"name_or_path": "x"}, "data": {"sources": [{"path": "x"}]},
                                 "loss": {"name": "bfpo", "beta": 1.0, "average_logps": True,
                                          "sft_weight": 0.5}})
    losses, pc, _, _, rr, *_ = _pair_losses(cfg, lambda b: policy, lambda b: (ref[:2], ref[2:]), batch)
    # per-token h: pair 0 (-2 - -1.5) - (-2 - -1) = 0.5, pair 1 (-3 - -2) - (-1 - -2) = -2
    # targets g/beta: unsafe/safe -1.0, safe/safe 0.5; anchors (per-token NLL of the safe
    # response, from the sums): pair 0 the rejected 4/2 = 2, pair 1 the chosen 30/10 = 3
    expected = torch.tensor([(0.5 + 1.0) ** 2 + 0.5 * 2.0, (-2.0 - 0.5) ** 2 + 0.5 * 3.0])
    assert torch.allclose(losses, expected)
    assert pc.tolist() == [-2.0, -3.0] and rr.tolist() == [-1.0, -2.0]  # metrics see per-token values
    summed = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"average_logps": False})})
    losses_sum, *_ = _pair_losses(summed, lambda b: policy, lambda b: (ref[:2], ref[2:]), batch)
    assert not torch.allclose(losses_sum, expected)


def test_anchor_weights_split_helpfulness_pairs_from_safety_pairs():
    """loss.sft_weight_helpful weighs pairs whose responses are both safe; others keep sft_weight."""
    from rayalign.config import Config
    from rayalign.losses import anchor_weights
    from rayalign.train.loop import _pair_losses

    like = torch.zeros(4)
    chosen_safe = torch.tensor([True, False, True, False])
    rejected_safe = torch.tensor([True, True, False, False])
    assert anchor_weights(0.3, None, chosen_safe, rejected_safe, like).tolist() == pytest.approx([0.3] * 4)
    assert anchor_weights(0.3, 0.8, chosen_safe, rejected_safe, like).tolist() == pytest.approx(
        [0.8, 0.3, 0.3, 0.3])
    assert anchor_weights(0.0, 0.5, chosen_safe.float(), rejected_safe.float(), like).tolist() == [
        0.5, 0.0, 0.0, 0.0]

    # In the loop: SafeDPO's anchor is the safe chosen response's per-token NLL; pair 0 is a
    # safety pair (chosen safe, rejected unsafe), pair 1 a helpfulness pair (both safe).
    counts = torch.tensor([2, 5, 2, 5])
    policy = torch.tensor([-4.0, -10.0, -6.0, -15.0])
    ref = policy.clone()  # h = 0: the SafeDPO term is the same for every setting below
    batch = {"label_counts": counts, "chosen_safe": torch.tensor([True, True]),
             "rejected_safe": torch.tensor([False, True])}

    def losses(**loss: float) -> torch.Tensor:
        cfg = Config.model_validate({"model": {"name_or_path": "x"}, "data": {"sources": [{"path": "x"}]},
                                     "loss": {"name": "safedpo", **loss}})
        return _pair_losses(cfg, lambda b: policy, lambda b: (ref[:2], ref[2:]), batch)[0]

    paper = losses()
    assert torch.allclose(losses(sft_weight=0.3) - paper, torch.tensor([0.3 * 2.0, 0.3 * 2.0]))
    assert torch.allclose(losses(sft_weight=0.3, sft_weight_helpful=1.0) - paper, torch.tensor([0.6, 2.0]))
    assert torch.allclose(losses(sft_weight_helpful=1.0) - paper, torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="sft_weight_helpful"):
        losses(sft_weight_helpful=-1.0)
