"""The loss registry: entries, dispatch, config validation and the baselines' hand values."""

from __future__ import annotations

import math

import pytest
import torch

from rayalign.config import Config, LossConfig, load_config
from rayalign.losses import (
    HYPERPARAMETERS,
    LOSSES,
    anchor_nll,
    cdpo_loss,
    dpo_loss,
    get_loss,
    preference_loss,
    rdpo_loss,
    safedpo_loss,
    simpo_loss,
)

# One pair with h = (-1 + 1.5) - (-2 + 1.5) = 1.0 (as in test_losses.py).
PC, PR, RC, RR = (torch.tensor([v], dtype=torch.float64) for v in (-1.0, -2.0, -1.5, -1.5))


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_every_entry_loads_and_declares_known_hyperparameters():
    for name, spec in LOSSES.items():
        assert spec.name == name and callable(spec.load())
        assert spec.paper and "beta" in spec.hyperparameters
        assert set(spec.hyperparameters) <= set(HYPERPARAMETERS)
    assert {"dpo", "ipo", "safedpo", "bfpo", "simpo", "cdpo", "rdpo"} <= set(LOSSES)
    assert [n for n, s in LOSSES.items() if not s.needs_reference] == ["simpo"]
    assert {n for n, s in LOSSES.items() if s.needs_safety_labels} == {"safedpo", "bfpo"}
    assert {n for n, s in LOSSES.items() if s.anchor == "safe"} == {"safedpo", "bfpo"}


def test_loss_config_has_one_field_per_hyperparameter_with_the_registry_default():
    cfg = LossConfig()
    for name, hp in HYPERPARAMETERS.items():
        assert getattr(cfg, name) == hp.default, name
    assert (cfg.delta, cfg.b1, cfg.alpha) == (10.0, 3.0, 0.5)
    assert set(cfg.hyperparameters()) == set(HYPERPARAMETERS)


def test_preference_loss_defaults_come_from_the_registry():
    safe, unsafe = torch.tensor([True]), torch.tensor([False])
    # no delta given: the registry's 10.0, the same as LossConfig's (it used to be 0.0)
    got = preference_loss("safedpo", PC, PR, RC, RR, safe, unsafe, beta=0.5)
    assert got.item() == pytest.approx(safedpo_loss(PC, PR, RC, RR, safe, unsafe, beta=0.5, delta=10.0).item())
    assert got.item() == pytest.approx(softplus(9.5))
    # other losses' hyperparameters are ignored, unknown names and bad values are not
    assert preference_loss("dpo", PC, PR, RC, RR, beta=0.5, delta=3.0, gamma=1.0).item() == pytest.approx(
        dpo_loss(PC, PR, RC, RR, beta=0.5).item()
    )
    with pytest.raises(ValueError, match="unknown loss hyperparameters"):
        preference_loss("dpo", PC, PR, RC, RR, beta=0.5, detla=3.0)
    with pytest.raises(ValueError, match=r"label_smoothing=0\.5 is out of range"):
        preference_loss("cdpo", PC, PR, RC, RR, beta=0.5, label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"b1=1 is out of range"):
        preference_loss("bfpo", PC, PR, RC, RR, safe, safe, beta=0.5, b1=1.0)


def test_simpo_matches_hand_value():
    # averages: chosen -6/3 = -2, rejected -8/2 = -4; β·(−2 + 4) − γ = 2·2 − 1 = 3
    pc, pr = torch.tensor([-6.0], dtype=torch.float64), torch.tensor([-8.0], dtype=torch.float64)
    counts_c, counts_r = torch.tensor([3]), torch.tensor([2])
    expected = softplus(-3.0)
    assert simpo_loss(pc, pr, counts_c, counts_r, beta=2.0, gamma=1.0).item() == pytest.approx(expected)
    # reference-free: no reference log-probs needed, token counts are
    got = preference_loss("simpo", pc, pr, chosen_token_counts=counts_c, rejected_token_counts=counts_r,
                          beta=2.0, gamma=1.0)
    assert got.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="chosen_token_counts"):
        preference_loss("simpo", pc, pr, beta=2.0)
    # length-normalised: the same per-token log-likelihood at any length gives the same loss
    long = simpo_loss(pc * 10, pr * 10, counts_c * 10, counts_r * 10, beta=2.0, gamma=1.0)
    assert long.item() == pytest.approx(expected)


def test_cdpo_and_rdpo_match_hand_values():
    # β·h = 0.5, ε = 0.1
    cdpo = 0.9 * softplus(-0.5) + 0.1 * softplus(0.5)
    rdpo = (0.9 * softplus(-0.5) - 0.1 * softplus(0.5)) / 0.8
    assert cdpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1).item() == pytest.approx(cdpo)
    assert rdpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1).item() == pytest.approx(rdpo)
    assert preference_loss("cdpo", PC, PR, RC, RR, beta=0.5, label_smoothing=0.1).item() == pytest.approx(cdpo)
    assert preference_loss("rdpo", PC, PR, RC, RR, beta=0.5).item() == pytest.approx(rdpo)  # default ε 0.1
    dpo = dpo_loss(PC, PR, RC, RR, beta=0.5).item()
    for fn in (cdpo_loss, rdpo_loss):  # ε = 0 is DPO
        assert fn(PC, PR, RC, RR, beta=0.5, label_smoothing=0.0).item() == pytest.approx(dpo)
    # cDPO's minimiser is finite: β·h = log((1-ε)/ε); the gradient vanishes there
    h = torch.tensor([math.log(9.0) / 0.5], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    cdpo_loss(h, zero, zero, zero, beta=0.5, label_smoothing=0.1).sum().backward()
    assert h.grad.item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_finite_for_extreme_inputs_and_keeps_shape(name):
    pc = torch.tensor([1e4, -1e4, 0.0, 5e3], requires_grad=True)
    pr = torch.tensor([-1e4, 1e4, 0.0, -5e3], requires_grad=True)
    ref, counts, safe = torch.zeros(4), torch.tensor([1, 5, 0, 3]), torch.tensor([True, False, True, False])
    loss = preference_loss(name, pc, pr, ref, ref, safe, ~safe, chosen_token_counts=counts,
                           rejected_token_counts=counts, beta=1.0, delta=5.0)
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def test_anchor_follows_the_registry_and_rejects_unknown_losses():
    chosen, rejected = torch.tensor([-4.0, -4.0]), torch.tensor([-8.0, -8.0])
    counts, c_safe, r_safe = torch.tensor([2, 2]), torch.tensor([True, False]), torch.tensor([False, True])
    for name, spec in LOSSES.items():
        got = anchor_nll(name, chosen, rejected, counts, counts, c_safe, r_safe).tolist()
        assert got == ([2.0, 4.0] if spec.anchor == "safe" else [2.0, 2.0]), name
    with pytest.raises(ValueError, match="unknown loss 'kto'"):
        anchor_nll("kto", chosen, rejected, counts, counts, c_safe, r_safe)


def test_config_validates_names_and_ranges_from_the_registry():
    assert load_config(None, ["loss.name=simpo", "loss.gamma=1.2"]).loss.gamma == 1.2
    with pytest.raises(ValueError, match=r"loss\.name.*expected one of dpo, ipo, safedpo, bfpo, simpo"):
        load_config(None, ["loss.name=kto"])
    with pytest.raises(ValueError, match=r"loss\.label_smoothing"):
        load_config(None, ["loss.label_smoothing=0.5"])
    with pytest.raises(ValueError, match=r"loss\.gamma"):
        load_config(None, ["loss.gamma=-1"])
    with pytest.raises(ValueError, match="simpo already normalises by response length"):
        load_config(None, ["loss.name=simpo", "loss.average_logps=true"])


def test_pipeline_decisions_read_the_registry():
    simpo = load_config(None, ["loss.name=simpo"])
    assert not simpo.scores_reference() and not simpo.applies_safedpo_transform()
    assert load_config(None, ["loss.name=dpo"]).scores_reference()
    assert not load_config(None, ["loss.name=dpo", "data.precompute_ref_logps=false"]).scores_reference()
    assert Config().applies_safedpo_transform()  # default loss: safedpo
    assert not load_config(None, ["data.safedpo_transform=false"]).applies_safedpo_transform()
    assert get_loss("bfpo").uses_helpfulness_stream


def test_training_step_passes_token_counts_and_skips_the_reference_for_simpo():
    from rayalign.train.loop import ReferenceLogps, _pair_losses

    cfg = load_config(None, ["loss.name=simpo", "loss.beta=2.0", "loss.gamma=1.0"])
    reference = ReferenceLogps(cfg, policy=None, device=torch.device("cpu"))  # never loads a model
    batch = {
        "ids": ["a"],
        "label_counts": torch.tensor([3, 2]),  # chosen rows, then rejected rows
        "chosen_safe": torch.tensor([1.0]),
        "rejected_safe": torch.tensor([1.0]),
    }
    out = _pair_losses(cfg, lambda b: torch.tensor([-6.0, -8.0]), reference, batch)
    assert out[0].item() == pytest.approx(softplus(-3.0))
    assert out[3].tolist() == [0.0] and out[4].tolist() == [0.0]  # zero reference: rewards β·log π


def test_docs_table_is_the_registry():
    from pathlib import Path

    from rayalign.losses.registry import markdown_tables

    docs = (Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text()
    assert markdown_tables() in docs, "regenerate docs/losses.md's tables (see the page)"
