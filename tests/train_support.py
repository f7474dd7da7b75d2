"""Tiny tokenized preference data for the training tests (data contract column names)."""

from __future__ import annotations

import random
from typing import Any

SAFE_ANSWERS = [
    "Sure! Here is a short answer to your question.",
    "Here's how to write a polite email to your manager.",
    "Mix flour, water, salt and yeast, then let it rise.",
]
UNSAFE_ANSWERS = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9",
]


def tokenize_pair(tokenizer, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    """Chat-template prompt + response tokens; labels -100 on the prompt."""
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    prompt_ids = list(prompt_ids)
    out: dict[str, Any] = {"prompt_length": len(prompt_ids)}
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        response = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out[f"{name}_input_ids"] = prompt_ids + response
        out[f"{name}_labels"] = [-100] * len(prompt_ids) + response
    return out


def separable_pairs(tokenizer, n: int, *, seed: int = 0, prefix: str = "p") -> list[dict[str, Any]]:
    """Pairs where chosen is always a 'safe' answer and rejected an 'unsafe' one.

    Prompt lengths vary so length grouping and padding have something to do.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(["how", "do", "I", "bake", "bread", "python", "list"])
                         for _ in range(rng.randint(2, 12)))
        chosen, rejected = rng.choice(SAFE_ANSWERS), rng.choice(UNSAFE_ANSWERS)
        row = {
            "id": f"{prefix}{i:04d}",
            "source": "synthetic",
            "prompt": words,
            "chosen": chosen,
            "rejected": rejected,
            "chosen_safe": True,
            "rejected_safe": i % 2 == 0,
        }
        row.update(tokenize_pair(tokenizer, words, chosen, rejected))
        rows.append(row)
    return rows


def ray_dataset(rows: list[dict[str, Any]], blocks: int = 4):
    import ray.data

    return ray.data.from_items(rows, override_num_blocks=blocks)


def alive_worker_pids() -> list[int]:
    """Pids of live Ray Train workers of THIS driver's cluster (the GCS actor table;
    the public state API needs the dashboard, which tests do not start)."""
    from ray._private import state

    return [
        a["Pid"]
        for a in state.actors().values()
        if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"
    ]


def train_and_kill_a_worker(cfg, rows: list[dict[str, Any]], checkpoint: str, *, timeout: float = 300):
    """Run ``run_training`` in a thread and SIGKILL one Train worker process as soon as
    Ray Train has registered ``checkpoint`` (e.g. ``checkpoint_000003``).

    Returns ``(killed pid or None, {"result": TrainResult} or {"error": exception})``.
    Killing before the checkpoint is registered would (correctly) restart from scratch,
    so the test waits for the controller's snapshot to name it.
    """
    import os
    import signal
    import threading
    import time
    from pathlib import Path

    from rayalign.train.trainer import run_training, storage_path_for

    snapshot = Path(storage_path_for(cfg)) / cfg.train.name / "checkpoint_manager_snapshot.json"
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = run_training(cfg, datasets={"train": ray_dataset(rows)}, verbose=False)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=fit)
    thread.start()
    killed = None
    deadline = time.monotonic() + timeout
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        if snapshot.is_file() and checkpoint in snapshot.read_text():
            pids = alive_worker_pids()
            if pids:
                killed = max(pids)
                os.kill(killed, signal.SIGKILL)  # a real worker process dies, mid-run
        time.sleep(0.02)
    thread.join(timeout=timeout + 100)
    return killed, outcome


class ListShard:
    """Ray Data's ``iter_batches`` shape over a list of rows."""

    def __init__(self, rows):
        self.rows = rows

    def iter_batches(self, *, batch_size, batch_format="numpy", prefetch_batches=0):
        import numpy as np

        for i in range(0, len(self.rows), batch_size):
            chunk = self.rows[i : i + batch_size]
            out = {}
            for key in chunk[0]:
                col = np.empty(len(chunk), dtype=object)
                col[:] = [r[key] for r in chunk]
                out[key] = col
            yield out
