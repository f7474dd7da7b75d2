"""Optimizer step time: torch AdamW as a for-loop, foreach and fused, on a model's parameters.

Prints one JSON object: seconds per ``step()`` (mean of 5 after one warm-up) for each
implementation, fp32 on CPU, with random gradients on every parameter of the model built
from its config (random weights; no hub). rayalign steps the fused one on CPU
(``rayalign.train.engine.deepspeed_config``); TRL's default is the same since torch 2.8.
Usage: ``python benchmarks/adamw_step.py [--model smollm2-135m-instruct] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rayalign.modeling.models import resolve_model_path

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(args.model)))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    seconds = {}
    for name, kwargs in (("for_loop", {"foreach": False}), ("foreach", {"foreach": True}),
                         ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(params, lr=1e-5, **kwargs)
        optimizer.step()  # warm-up: allocates the moments
        start = time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        seconds[name] = round((time.perf_counter() - start) / args.steps, 4)
        del optimizer
    print(json.dumps({"model": args.model, "parameters": sum(p.numel() for p in params),
                      "threads": args.threads, "step_s": seconds,
                      "fused_speedup": round(seconds["for_loop"] / seconds["fused"], 2)}))


if __name__ == "__main__":
    main()
