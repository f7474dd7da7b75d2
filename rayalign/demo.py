"""``rayalign demo``: align a real chat model for safety on one machine and show the effect.

The steps are the product's whole pipeline at laptop scale: prepare the built-in demo
pairs with Ray Data (validation, SafeDPO transformation, cached reference log-probs),
evaluate the untouched model through Ray Serve, train with Ray Train + DeepSpeed,
evaluate the trained model the same way, and write a report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayalign.config import Config, config_from_mapping

#: Settings chosen so the whole demo fits in 15 minutes on a 2-core CPU.
DEMO_DEFAULTS: dict[str, Any] = {
    "model": {"name_or_path": "smollm2-135m-instruct",
              "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                              "gate_proj", "up_proj", "down_proj"],
                       "merge_on_export": True}},
    "data": {"sources": [{"path": "builtin:demo"}], "max_length": 192, "max_prompt_length": 96,
             "eval_fraction": 0.0, "ref_batch_size": 16},
    # The NLL term on the safe preferred responses is what makes the model learn to refuse rather
    # than just stop complying politely (see docs/training.md, loss.sft_weight).
    "loss": {"name": "safedpo", "beta": 0.1, "delta": 10.0, "sft_weight": 1.0},
    "train": {"num_workers": 1, "zero_stage": 2,
              "learning_rate": 5e-4, "batch_size": 8, "max_steps": 40, "warmup_ratio": 0.05,
              "checkpoint_every": 20, "keep_checkpoints": 1, "log_every": 5, "name": "demo-train"},
    # The refusal judge reads how a reply starts, so short generations suffice.
    "eval": {"benchmarks": ["demo"], "judge": "refusal", "max_new_tokens": 24, "max_batch_size": 16,
             "concurrency": 16},
}

#: Per-method ``--set`` values on top of DEMO_DEFAULTS (all methods train the same LoRA).
METHOD_OVERRIDES: dict[str, list[str]] = {
    "safedpo": [],
    "dpo": ["loss.name=dpo"],
    # A buffered step holds batch_size pairs of each set: 4 + 4 costs what SafeDPO's 8 do.
    "bfpo": ["loss.name=bfpo", "loss.beta=0.1", "train.batch_size=4"],
}


@dataclass
class DemoResult:
    output_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "harmless_before": self.before.get("harmless_ratio"),
            "harmless_after": self.after.get("harmless_ratio"),
            "benign_compliance_before": self.before.get("benign_compliance"),
            "benign_compliance_after": self.after.get("benign_compliance"),
            "seconds": round(self.seconds, 1),
            "step_seconds": {k: round(v, 1) for k, v in self.steps.items()},
            "output_dir": str(self.output_dir),
        }


#: BFPO's buffered mode: the demo file's harmful-request pairs are the safety set and its
#: benign pairs (both responses safe) the helpfulness set, mixed in equal-size batches.
BFPO_BUFFERED_DATA: dict[str, Any] = {
    "sources": [{"path": "builtin:demo", "where": {"kind": "harmful"}, "name": "demo-safety"}],
    "helpfulness_sources": [
        {"path": "builtin:demo", "where": {"kind": "benign"}, "name": "demo-helpfulness"}
    ],
}


def demo_config(method: str, overrides: list[str] | None = None, output_dir: str = "outputs/demo") -> Config:
    """The demo's config for ``method`` (safedpo, bfpo, dpo), plus the user's ``--set`` values."""
    raw = json.loads(json.dumps(DEMO_DEFAULTS))
    # One process at a time does the heavy work (score, serve, train): let it use every core.
    cores = os.cpu_count() or 1
    raw["data"]["ref_torch_threads"] = raw["train"]["torch_threads"] = raw["eval"]["torch_threads"] = cores
    raw["train"]["output_dir"] = output_dir
    raw["eval"]["output_dir"] = str(Path(output_dir) / "eval")
    if method == "bfpo":
        raw["data"].update(BFPO_BUFFERED_DATA)
    return config_from_mapping(raw, [*METHOD_OVERRIDES[method], *(overrides or [])], source="demo")


def _say(message: str) -> None:
    print(f"[rayalign demo] {message}", flush=True)


def _start_over_if_settings_changed(cfg: Config) -> None:
    """Same settings resume an interrupted demo; other settings must not reuse its checkpoints."""
    from rayalign.train.trainer import checkpoints_from_other_settings

    stale = checkpoints_from_other_settings(cfg)
    if stale:
        run_dir, changed = stale
        _say(f"settings changed since the last demo ({', '.join(changed[:4])}): training starts over")
        shutil.rmtree(run_dir, ignore_errors=True)


def run_demo(cfg: Config, *, method: str) -> DemoResult:
    """Run the six demo steps; every step prints what it did and how long it took."""
    from rayalign.eval.runner import evaluate_model
    from rayalign.models import resolve_model_path
    from rayalign.ray_session import init_ray
    from rayalign.train.trainer import output_dir_for, prepare_training_data, run_training

    out = Path(cfg.train.output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    _start_over_if_settings_changed(cfg)
    cfg.save(out / "config.yaml")
    started, steps = time.perf_counter(), {}

    def timed(name: str, fn, *args, **kwargs):
        begin = time.perf_counter()
        value = fn(*args, **kwargs)
        steps[name] = time.perf_counter() - begin
        return value

    _say(f"1/6 model: {cfg.model.name_or_path} (converted to safetensors once, then cached)")
    timed("model", resolve_model_path, cfg.model.name_or_path)
    init_ray()

    _say("2/6 data: validate, transform and score the built-in demo pairs with Ray Data")
    datasets, data_stats = timed("data", prepare_training_data, cfg, output_dir_for(cfg))
    _say("    " + _data_line(data_stats))

    _say("3/6 evaluate the untouched model through Ray Serve (held-out demo prompts)")
    before = timed("eval_before", evaluate_model, cfg.model, cfg.eval, out / "eval_before")
    _say(f"    harmless {before['harmless_ratio']:.2f}, benign compliance {before['benign_compliance']:.2f}")

    _say(f"4/6 train {method} with Ray Train + DeepSpeed")
    trained = timed("train", run_training, cfg, datasets=datasets)

    _say("5/6 evaluate the trained model the same way")
    trained_cfg = cfg.model.model_copy(update={"name_or_path": str(trained.model_dir), "lora": None,
                                               "trainable_modules": None})
    after = timed("eval_after", evaluate_model, trained_cfg, cfg.eval, out / "eval_after")

    result = DemoResult(out, before, after, time.perf_counter() - started, steps)
    _say("6/6 report")
    write_report(result, method=method, data_stats=data_stats, history=trained.history,
                 model_dir=trained.model_dir)
    return result


def _data_line(stats: dict[str, Any]) -> str:
    validation = stats.get("validation", {})
    transform = stats.get("transform", {})
    counts = transform.get("safedpo") or {}
    # Sorted: a cache hit returns the counts in another order than a fresh run.
    applied = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else "not applied"
    return (f"{validation.get('valid', '?')} valid / {validation.get('rows', '?')} rows; "
            f"SafeDPO transformation: {applied}; reference log-probs cache: "
            f"{stats.get('ref_cache', '?')}")


def write_report(result: DemoResult, *, method: str, data_stats: dict[str, Any],
                 history: list[dict[str, Any]], model_dir: Path | None) -> dict[str, Path]:
    """``report.json``, ``report.md`` and ``report.png`` (before/after bars, training curves)."""
    out = result.output_dir
    payload = {**result.as_json(), "method": method, "model_dir": str(model_dir), "data": data_stats,
               "training": history[-1] if history else {}}
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    plot = plot_report(result, history, out / "report.png")
    rows = [("harmless ratio (harmful prompts)", "harmless_ratio"),
            ("compliance (benign prompts)", "benign_compliance")]
    lines = [f"# rayalign demo: {method} on the built-in model", "",
             "| metric | before | after | change |", "|---|---|---|---|"]
    for label, key in rows:
        b, a = result.before.get(key), result.after.get(key)
        lines.append(f"| {label} | {b:.2f} | {a:.2f} | {a - b:+.2f} |")
    lines += ["", f"Total time: {result.seconds / 60:.1f} min "
              f"({', '.join(f'{k} {v:.0f}s' for k, v in result.steps.items())}).", "",
              f"Data: {_data_line(data_stats)}.", "",
              f"Trained model: `{model_dir}`", "", "![before/after and training curves](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return {"json": out / "report.json", "markdown": out / "report.md", "plot": plot}


def plot_report(result: DemoResult, history: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["harmless ratio\n(harmful prompts)", "compliance\n(benign prompts)"]
    keys = ["harmless_ratio", "benign_compliance"]
    x = range(len(keys))
    bars.bar([i - 0.2 for i in x], [result.before[k] for k in keys], width=0.4, label="before")
    bars.bar([i + 0.2 for i in x], [result.after[k] for k in keys], width=0.4, label="after")
    bars.set_xticks(list(x), labels)
    bars.set_ylim(0, 1)
    bars.set_title("Held-out demo prompts")
    bars.legend()
    if history:
        steps = [h["step"] for h in history]
        curves.plot(steps, [h["loss"] for h in history], label="loss")
        curves.plot(steps, [h["rewards/accuracy"] for h in history], label="reward accuracy")
        curves.plot(steps, [h["rewards/margins"] for h in history], label="reward margin")
        curves.set_xlabel("step")
        curves.legend()
        curves.grid(alpha=0.3)
    curves.set_title("Training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_summary(result: DemoResult) -> str:
    """The before/after table printed at the end."""
    rows = [("harmless ratio (harmful)", "harmless_ratio"), ("compliance (benign)", "benign_compliance")]
    lines = [f"{'':<26}{'before':>8}{'after':>8}{'change':>8}"]
    for label, key in rows:
        b, a = result.before[key], result.after[key]
        lines.append(f"{label:<26}{b:>8.2f}{a:>8.2f}{a - b:>+8.2f}")
    lines.append(f"\nreport: {result.output_dir / 'report.md'}  ({result.seconds / 60:.1f} min)")
    return "\n".join(lines)
