"""The SafeDPO transformation on every safety combination."""

from __future__ import annotations

import numpy as np

from rayalign.data.safety import TransformCounts, safedpo_transform


def test_counts_and_rows_for_all_four_combinations():
    batch = {
        "id": np.array(["ss", "su", "us", "uu", "ss2"]),
        "chosen": np.array(["c1", "c2", "c3", "c4", "c5"], dtype=object),
        "rejected": np.array(["r1", "r2", "r3", "r4", "r5"], dtype=object),
        "chosen_safe": np.array([True, True, False, False, True]),
        "rejected_safe": np.array([True, False, True, False, True]),
        # ragged token lists travel with their response
        "chosen_input_ids": np.array([[1], [2, 2], [3, 3, 3], [4], [5]], dtype=object),
        "rejected_input_ids": np.array([[9], [8, 8], [7], [6], [5, 5]], dtype=object),
    }
    out, counts = safedpo_transform(batch)
    assert counts == TransformCounts(kept=3, swapped=1, dropped=1)
    assert counts.as_dict() == {"kept": 3, "swapped": 1, "dropped": 1}
    assert out["id"].tolist() == ["ss", "su", "us", "ss2"]
    assert out["chosen"].tolist() == ["c1", "c2", "r3", "c5"]
    assert out["rejected"].tolist() == ["r1", "r2", "c3", "r5"]
    assert out["chosen_safe"].all()  # after the transformation every chosen response is safe
    assert out["rejected_safe"].tolist() == [True, False, False, True]
    assert out["chosen_input_ids"][2] == [7] and out["rejected_input_ids"][2] == [3, 3, 3]
    # the input batch is untouched
    assert batch["chosen"].tolist() == ["c1", "c2", "c3", "c4", "c5"]


def test_counts_add_up_across_batches():
    assert TransformCounts(1, 2, 3) + TransformCounts(4, 5, 6) == TransformCounts(5, 7, 9)


def test_empty_batch():
    out, counts = safedpo_transform({"chosen_safe": np.array([], bool), "rejected_safe": np.array([], bool)})
    assert counts == TransformCounts() and len(out["chosen_safe"]) == 0
