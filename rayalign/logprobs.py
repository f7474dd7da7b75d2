"""Sequence log-probabilities of responses under a causal LM: the one number every
preference loss needs.

Why not ``model(...).logits``: the vocabulary projection is by far the largest matmul
of a small model (SmolLM2-135M: 49k x 576 per token) and a DPO batch is mostly prompt
and padding. We run the transformer backbone once, keep only the hidden states at
positions that predict a response token, and project *those* through ``lm_head``;
the log-softmax is then one ``logsumexp`` and one ``gather`` over ``[N_response, V]``
instead of ``[B, T, V]``. The result is identical (up to float rounding) to the naive
full-logits computation, which :func:`sequence_logps_reference` keeps for tests and for
architectures whose head is not a plain projection.

Both reference scoring (Ray Data) and training call :func:`sequence_logps`, so cached
reference log-probs and on-the-fly ones are computed by the same code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Tensor = torch.Tensor

IGNORE_INDEX = -100


def _unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DeepSpeed / DDP / PEFT wrappers.

    PEFT's LoRA layers live *inside* the base model, so unwrapping keeps the adapter
    active (and ``with peft_model.disable_adapter():`` still disables it).
    """
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()  # PeftModel
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module  # DeepSpeedEngine, DistributedDataParallel
        else:
            return model


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(backbone, lm_head)`` when the head is a plain projection, else ``None``."""
    base = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if base is None or base is model or get_head is None:
        return None
    head = get_head()
    config = getattr(model, "config", None)
    # Heads that post-process logits (Gemma-2 soft-capping, Cohere logit scale) take the
    # reference path so the maths stays exactly the model's own.
    special = any(
        getattr(config, attr, None) not in (None, 1.0)
        for attr in ("final_logit_softcapping", "logit_scale")
    )
    if head is None or special:
        return None
    return base, head


def _shifted(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Targets for positions ``0..T-2`` (token t predicts label t+1) and their mask."""
    targets = labels[:, 1:]
    return targets, targets != IGNORE_INDEX


def _token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[target]`` in fp32 without materialising the full softmax."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """Sum of ``log p(token)`` over response positions, shape ``[B]`` (fp32).

    ``labels`` are aligned with ``input_ids`` (``-100`` on prompt and padding); this
    function does the one-token shift. The vocabulary projection runs only on the
    positions that predict a response token.
    """
    inner = _unwrap(model)
    parts = _backbone_and_head(inner)
    if parts is None:
        return sequence_logps_reference(model, input_ids, attention_mask, labels)
    backbone, head = parts
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    targets, mask = _shifted(labels)
    rows = mask.nonzero(as_tuple=True)[0]
    selected = hidden[:, :-1][mask]  # [N, H]: only states that predict a response token
    token_logps = _token_logps(head(selected), targets[mask])
    out = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, rows, token_logps)


def sequence_logps_reference(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """The naive computation from full ``[B, T, V]`` logits (tests, unusual heads)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    targets, mask = _shifted(labels)
    token_logps = _token_logps(logits[:, :-1], targets.clamp(min=0))
    return (token_logps * mask).sum(-1)


def concatenated_logps(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """One forward over chosen and rejected stacked ``[2B, T]`` (chosen rows first).

    ``batch`` is what :func:`rayalign.train.collate.collate_pairs` returns: ``input_ids``,
    ``attention_mask`` and ``labels`` of the concatenated rows.
    """
    logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]
