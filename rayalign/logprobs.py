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

Both reference scoring (Ray Data) and training call :func:`batch_logps`, so cached
reference log-probs and on-the-fly ones are computed by the same code.

Two batch layouts (``rayalign.train.collate``): *padded* (chosen and rejected stacked
``[2B, T]``, :func:`sequence_logps`) and *packed* (each pair once as
``[prompt | chosen | rejected]`` with a 4D mask, :func:`packed_sequence_logps`). Both
return the same ``[2B]`` numbers (tested within 1e-4 in fp32).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayalign.data.schema import IGNORE_INDEX as IGNORE_INDEX  # re-exported

# HEAD_CHUNK_TOKENS: scored tokens whose logits exist at once in head_token_logps (a
# memory bound; defined torch-free so that `rayalign plan` sizes memory with it).
from rayalign.jobs.archs import HEAD_CHUNK_TOKENS

Tensor = torch.Tensor


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




class _ChunkedHeadLogps(torch.autograd.Function):
    """``log softmax(hidden @ W.T + b)[target]`` computed ``HEAD_CHUNK_TOKENS`` rows at a time.

    Only one ``[chunk, V]`` block of logits lives at a time, in forward and (recomputed)
    in backward, instead of the ``[N, V]`` logits plus their softmax gradient; for
    SmolLM2's 49k vocabulary that is 200 KB per token. The gradient is the analytic one
    (``(onehot - softmax) * g``), in fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):  # type: ignore[override]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], HEAD_CHUNK_TOKENS):
            part = slice(start, start + HEAD_CHUNK_TOKENS)
            logits = F.linear(hidden[part], weight, bias).float()
            out[part] = logits.gather(-1, targets[part, None])[:, 0] - torch.logsumexp(logits, -1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, bias, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = (
            torch.zeros_like(bias, dtype=torch.float32)
            if bias is not None and ctx.needs_input_grad[2] else None
        )
        for start in range(0, hidden.shape[0], HEAD_CHUNK_TOKENS):
            part = slice(start, start + HEAD_CHUNK_TOKENS)
            logits = F.linear(hidden[part], weight, bias).float()
            grad_logits = torch.softmax(logits, -1).mul_(-grad_out[part, None])
            grad_logits[torch.arange(logits.shape[0], device=logits.device), targets[part]] += grad_out[part]
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[part] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.t() @ hidden[part]).float()
            if grad_bias is not None:
                grad_bias += grad_logits.float().sum(0)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None


def head_token_logps(head: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """Token log-probs ``[N]`` (fp32) of ``targets`` under ``head`` applied to ``hidden [N, H]``.

    A plain ``nn.Linear`` head whose weight is an ordinary tensor takes the chunked path
    (:class:`_ChunkedHeadLogps`); anything else (LoRA on the head, ZeRO-3 partitioned
    weights) calls the module and materialises ``[N, V]`` logits.
    """
    weight = getattr(head, "weight", None)
    plain = (
        type(head) is nn.Linear and isinstance(weight, torch.Tensor) and weight.dim() == 2
        and not hasattr(weight, "ds_id")
    )
    if not plain:
        return _token_logps(head(hidden), targets)
    return _ChunkedHeadLogps.apply(hidden, weight, head.bias, targets)


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
    token_logps = head_token_logps(head, selected, targets[mask])
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


# --------------------------------------------------------------------------- packed layout

#: Attention implementations that take the packed layout's 4D mask, and the mask kind.
PACKED_MASK_KINDS = {"sdpa": "bool", "eager": "float", "flex_attention": "block"}


def packing_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot run the packed layout exactly (``None`` when it can).

    Needs an attention implementation that takes an arbitrary 4D mask (SDPA, eager,
    flex) and layer types whose masks we can build exactly (full attention, and
    sliding-window layers of models that take a per-layer-type mask dict).
    """
    config = getattr(_unwrap(model), "config", None)
    if config is None:
        return "the model has no config"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in PACKED_MASK_KINDS:
        return f"attention implementation {impl!r} takes no custom 4D mask"
    layer_types = set(getattr(config, "layer_types", None) or [])
    other = layer_types - {"full_attention", "sliding_attention"}
    if other:
        return f"layer types {sorted(other)} have no exact packed mask"
    if not layer_types and getattr(config, "sliding_window", None) and getattr(
        config, "use_sliding_window", True
    ):
        return "sliding-window attention without per-layer-type masks"
    return None


def packed_mask_options(model: nn.Module) -> dict[str, Any]:
    """``collate_packed`` keyword arguments this model needs (mask dtype, sliding window)."""
    config = _unwrap(model).config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    options: dict[str, Any] = {}
    if PACKED_MASK_KINDS.get(impl) == "float":
        options["float_mask_dtype"] = getattr(config, "dtype", None) or torch.float32
        if isinstance(options["float_mask_dtype"], str):
            options["float_mask_dtype"] = getattr(torch, options["float_mask_dtype"])
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        options["sliding_window"] = int(config.sliding_window)
    return options


#: Attention implementation the packed path switches SDPA models to for its forward.
PAIR_ATTENTION = "rayalign_pair_sdpa"


def pair_segment_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      is_causal=None, **kwargs):
    """SDPA over each pair's block of a packed row only (``pair_segments`` kwarg).

    Attention never crosses pairs, so the blocks off the diagonal are all masked: SDPA
    per ``(start, end)`` segment with that segment's slice of the 4D mask gives the same
    result as one SDPA over the whole row at ``sum(len^2)`` instead of ``row_len^2`` cost
    (measured: docs/training.md). Without ``pair_segments`` it is transformers' SDPA.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    segments = kwargs.pop("pair_segments", None)
    if segments is None or not isinstance(attention_mask, torch.Tensor):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows = []
    for r, bounds in enumerate(segments):
        rows.append(torch.cat([
            F.scaled_dot_product_attention(
                query[r : r + 1, :, s:e], key[r : r + 1, :, s:e], value[r : r + 1, :, s:e],
                attn_mask=attention_mask[r : r + 1, :, s:e, s:e], dropout_p=dropout, scale=scaling,
            )
            for s, e in bounds
        ], dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _register_pair_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(PAIR_ATTENTION, pair_segment_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PAIR_ATTENTION, sdpa_mask)


class _pair_attention:
    """Context: an SDPA model runs :func:`pair_segment_sdpa` (restored on exit).

    Gradient checkpointing recomputes after the context closed, with plain SDPA over the
    full mask: the same numbers, only slower.
    """

    def __init__(self, model: nn.Module) -> None:
        self.config = getattr(_unwrap(model), "config", None)
        self.active = getattr(self.config, "_attn_implementation", None) == "sdpa"

    def __enter__(self) -> bool:
        if self.active:
            _register_pair_attention()
            self.config._attn_implementation = PAIR_ATTENTION
        return self.active

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.config._attn_implementation = "sdpa"


def _block_mask(mask: Tensor) -> Any:
    """A dense bool ``[R, 1, L, L]`` mask as a flex-attention ``BlockMask``."""
    from torch.nn.attention.flex_attention import create_block_mask

    dense = mask[:, 0]

    def mask_mod(b, h, q, k):
        return dense[b, q, k]

    rows, length = dense.shape[0], dense.shape[-1]
    return create_block_mask(mask_mod, rows, None, length, length, device=str(mask.device))


def _model_mask(model: nn.Module, mask: Any) -> Any:
    impl = getattr(_unwrap(model).config, "_attn_implementation", None)
    if impl == "flex_attention":
        if isinstance(mask, dict):
            return {k: _block_mask(v) for k, v in mask.items()}
        return _block_mask(mask)
    return mask


def packed_sequence_logps(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """Response log-probs ``[2B]`` (chosen then rejected, fp32) from a packed batch.

    ``batch`` is what :func:`rayalign.train.collate.collate_packed` returns. One forward
    over the packed rows; the head runs only on the hidden states that predict a scored
    token (``score_rows``, ``score_positions``), and each token's log-prob is summed into
    its sequence (``score_index``).
    """
    inner = _unwrap(model)
    parts = _backbone_and_head(inner)
    kwargs = dict(
        input_ids=batch["input_ids"], attention_mask=_model_mask(inner, batch["attention_mask"]),
        position_ids=batch["position_ids"], use_cache=False,
    )
    rows, positions = batch["score_rows"], batch["score_positions"]
    with _pair_attention(inner) as by_pair:
        if by_pair and "pair_segments" in batch:
            kwargs["pair_segments"] = batch["pair_segments"]
        if parts is None:
            logits = model(**kwargs).logits[rows, positions]
            token_logps = _token_logps(logits, batch["score_targets"])
        else:
            backbone, head = parts
            hidden = backbone(**kwargs)[0]
            token_logps = head_token_logps(head, hidden[rows, positions], batch["score_targets"])
    out = torch.zeros(batch["num_sequences"], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, batch["score_index"], token_logps)


def batch_logps(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """``[2B]`` response log-probs of a padded or packed batch (chosen rows first)."""
    if "score_index" in batch:
        return packed_sequence_logps(model, batch)
    return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def mean_token_logps(logps: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """Summed response log-probs ``[B]`` divided by their scored token counts ``[B]``.

    ``loss.average_logps``: the per-token (length-normalised) log-probability that TRL's
    DPO trainer uses for IPO (Azar et al., arXiv 2310.12036) and SimPO (arXiv 2405.14734,
    eq. 4) uses throughout. A count of 0 (a response truncated away) is treated as 1.
    """
    return logps / token_counts.clamp(min=1).to(device=logps.device, dtype=logps.dtype)
