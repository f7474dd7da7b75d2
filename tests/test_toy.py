"""The illustrative experiment reproduces the paper-reported outcomes."""

from __future__ import annotations

import pytest

from rayalign.toy import (
    ACTIONS,
    GLOBAL_ORDER,
    HELPFULNESS_ORDER,
    ToySettings,
    preference_pairs,
    run_toy,
)


@pytest.fixture(scope="module")
def toy_result():
    # The paper's setting (1800 Adam steps, lr 0.01, batch 32) with 3 seeds to save time.
    return run_toy(ToySettings(seeds=3))


def test_labels_make_helpfulness_and_safety_conflict():
    most_helpful = max(range(len(ACTIONS)), key=lambda i: ACTIONS[i].helpfulness)
    assert not ACTIONS[most_helpful].safe
    assert HELPFULNESS_ORDER == (3, 0, 1, 2)


def test_safedpo_pairs_are_transformed():
    pairs = preference_pairs("safedpo")
    assert len(pairs["chosen"]) == 5  # unsafe vs unsafe dropped
    assert pairs["chosen_safe"].all()
    assert len(preference_pairs("dpo")["chosen"]) == 6


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_only_bfpo_recovers_the_global_order(toy_result, beta):
    assert toy_result.run("bfpo", beta).order == GLOBAL_ORDER
    # SafeDPO is left out: it sends both unsafe actions to ~0, where their order is noise.
    for method in ("dpo", "ipo"):
        assert toy_result.run(method, beta).order != GLOBAL_ORDER


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_dpo_and_ipo_recover_helpfulness_order(toy_result, beta):
    for method in ("dpo", "ipo"):
        assert toy_result.run(method, beta).order == HELPFULNESS_ORDER


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_safedpo_drives_unsafe_actions_to_zero(toy_result, beta):
    run = toy_result.run("safedpo", beta)
    unsafe = [i for i, a in enumerate(ACTIONS) if not a.safe]
    assert run.final_probs[:, unsafe].sum(axis=1).max() < 0.01  # every seed, not just the mean
    assert run.mean_final[0] > run.mean_final[1]  # and still prefers the more helpful safe action
