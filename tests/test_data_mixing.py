"""BFPO buffered mixing: equal-size steps from two streams of any relative size."""

from __future__ import annotations

import pytest

from rayalign.data.mixing import zip_cycling


def batches(n: int, tag: str):
    return lambda: iter([f"{tag}{i}" for i in range(n)])


def test_shorter_stream_is_cycled_until_the_longer_ends():
    pairs = list(zip_cycling(batches(2, "s"), batches(5, "h")))
    assert [b for _, b in pairs] == ["h0", "h1", "h2", "h3", "h4"]
    assert [a for a, _ in pairs] == ["s0", "s1", "s0", "s1", "s0"]
    assert list(zip_cycling(batches(3, "a"), batches(3, "b"))) == [
        ("a0", "b0"),
        ("a1", "b1"),
        ("a2", "b2"),
    ]
    assert len(list(zip_cycling(batches(7, "a"), batches(1, "b")))) == 7


def test_empty_stream_is_an_error_not_an_infinite_loop():
    with pytest.raises(ValueError, match="yields no batches"):
        list(zip_cycling(batches(0, "a"), batches(3, "b")))


def test_a_stream_is_restarted_only_while_the_other_still_runs():
    """Restarting a Ray Data split starts a new epoch on every worker: never for nothing."""
    made = {"a": 0, "b": 0}

    def counted(n, tag):
        def make():
            made[tag] += 1
            return iter([f"{tag}{i}" for i in range(n)])
        return make

    assert len(list(zip_cycling(counted(3, "a"), counted(3, "b")))) == 3
    assert made == {"a": 1, "b": 1}  # equal lengths: nothing restarted
    made.update(a=0, b=0)
    assert len(list(zip_cycling(counted(5, "a"), counted(2, "b")))) == 5
    assert made == {"a": 1, "b": 3}  # the longer one is never restarted at the end
    with pytest.raises(ValueError, match="yields no batches"):
        list(zip_cycling(batches(3, "a"), batches(0, "b")))
