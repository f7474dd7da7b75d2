"""benchmarks/train_throughput.py's FLOP accounting (the speed-up the layouts allow)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from train_throughput import matmul_flops_per_position, scored_tokens  # noqa: E402


def test_matmul_flops_count_the_backbone_linears_and_the_head_once():
    from transformers import AutoConfig

    from rayalign.modeling.models import TINY_MODEL_NAME, resolve_model_path

    path = resolve_model_path(TINY_MODEL_NAME)
    c = AutoConfig.from_pretrained(path)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    body, head = matmul_flops_per_position(str(path))
    assert body == 2 * c.num_hidden_layers * (attention + mlp)
    assert head == 2 * c.vocab_size * c.hidden_size


def test_scored_tokens_are_the_response_labels_of_both_sides():
    row = {"chosen_labels": [-100, -100, 5, 6], "rejected_labels": [-100, -100, 7]}
    assert scored_tokens(row) == 3
