"""Export the trained policy in Hugging Face format (safetensors + tokenizer + config).

Layout of an export directory::

    model/      a full model that plain ``transformers`` loads (full or selective
                fine-tuning, or LoRA merged into the base when model.lora.merge_on_export)
    adapter/    the PEFT LoRA adapter (LoRA runs), loadable with ``peft``

Under ZeRO-3 every rank holds a slice of each parameter; the weights are gathered
(a collective: every rank calls :func:`export_model`) and rank 0 writes them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rayalign.config import Config
from rayalign.jobs.stages import EXPORTED_MODEL_DIR

MODEL_DIR = EXPORTED_MODEL_DIR
ADAPTER_DIR = "adapter"


def full_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """The complete weights of the model DeepSpeed wraps, on rank 0 (``None`` elsewhere).

    Keys are those of the Hugging Face (or PEFT) model, without our wrapper's prefix.
    """
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective
    else:
        state = engine.module.state_dict() if rank == 0 else None
    if rank != 0 or state is None:
        return None
    prefix = "model."
    return {k.removeprefix(prefix): v.detach().cpu() for k, v in state.items()}


def _atomic_dir(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _commit(tmp: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)


def save_full_model(model: Any, state: dict[str, torch.Tensor], tokenizer: Any, target: Path) -> Path:
    tmp = _atomic_dir(target)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _commit(tmp, target)
    return target


def save_lora(
    peft_model: Any, state: dict[str, torch.Tensor], cfg: Config, tokenizer: Any, out_dir: Path
) -> None:
    """The adapter, and optionally the base with the adapter merged in (a fresh CPU copy,
    so it works whatever ZeRO stage held the weights)."""
    tmp = _atomic_dir(out_dir / ADAPTER_DIR)
    peft_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _commit(tmp, out_dir / ADAPTER_DIR)
    if cfg.model.lora is not None and cfg.model.lora.merge_on_export:
        from rayalign.modeling.models import apply_lora, load_model

        fresh = apply_lora(load_model(cfg.model), cfg.model.lora)
        missing = fresh.load_state_dict(state, strict=False).missing_keys
        if any("lora_" in key for key in missing):
            raise RuntimeError(f"LoRA export: adapter weights missing from the state: {missing[:4]}")
        merged = fresh.merge_and_unload()
        save_full_model(merged, merged.state_dict(), tokenizer, out_dir / MODEL_DIR)


def export_model(engine: Any, cfg: Config, tokenizer: Any, out_dir: Path, *, is_writer: bool) -> None:
    """Gather the weights (every rank must call this) and write the export on rank 0."""
    state = full_state_dict(engine)
    if not is_writer or state is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    model = engine.module.model
    if cfg.model.lora is not None:
        save_lora(model, state, cfg, tokenizer, out_dir)
    else:
        save_full_model(model, state, tokenizer, out_dir / MODEL_DIR)
