"""DeepSpeed configuration and the learning-rate schedule, as pure functions of the config."""

from __future__ import annotations

import math
from typing import Any

from rayalign.config import TrainConfig


def deepspeed_config(train: TrainConfig, *, world_size: int, dtype: str, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config for this run.

    On CPU the optimizer is torch's AdamW (``torch_adam``) with its fused CPU kernel
    (``fused=True``: one vectorised pass over each tensor instead of the per-op loop; a
    step over SmolLM2-135M's 134.5M fp32 parameters takes 0.07 s instead of 0.35 s on 2
    cores, ``benchmarks/adamw_step.py``); DeepSpeed's fused Adam needs CUDA. With optimizer
    offload DeepSpeed uses its CPU Adam (a C++ op it JIT-builds).
    """
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.offload_optimizer:
        if train.zero_stage == 0:
            raise ValueError("train.offload_optimizer needs zero_stage >= 1")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if train.offload_params:
        if train.zero_stage != 3:
            raise ValueError("train.offload_params needs zero_stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if train.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    micro, accumulation = train.batch_size, train.gradient_accumulation_steps
    torch_adam = not on_gpu and not train.offload_optimizer
    if train.max_tokens_per_batch is not None:
        # one engine step per optimizer step; the loop runs its token-bounded chunks as
        # backward passes with a manual accumulation boundary and scales the loss itself
        micro, accumulation = train.batch_size * train.gradient_accumulation_steps, 1
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world_size,
        "gradient_clipping": train.max_grad_norm,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.learning_rate,
                "weight_decay": train.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "torch_adam": torch_adam,
                # DeepSpeed hands the remaining params to torch.optim.AdamW
                **({"fused": True} if torch_adam else {}),
            },
        },
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """LR factor for optimizer step ``step`` (0-based): linear warmup, then the schedule."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, train: TrainConfig, total_steps: int):
    """A LambdaLR DeepSpeed steps once per optimizer step (it is saved in checkpoints)."""
    from torch.optim.lr_scheduler import LambdaLR

    warmup = math.ceil(train.warmup_ratio * total_steps)
    return LambdaLR(
        optimizer,
        lambda step: lr_multiplier(
            step, total_steps=total_steps, warmup_steps=warmup, schedule=train.lr_schedule
        ),
    )
