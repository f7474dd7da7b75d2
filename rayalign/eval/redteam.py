"""Automatic red-teaming data (BFPO §4.3): turn a model's own harmful outputs into pairs.

For each harmful prompt the served model samples two responses; the judge labels each
safe or unsafe; a ranker orders them by helpfulness. Prompts where the model produced
something harmful are kept and written as canonical preference pairs (``chosen`` = more
helpful, with each response's safety label), the shape ``rayalign train`` reads; SafeDPO /
BFPO then use the safety labels to push the model away from its own unsafe answers.

:func:`build_pairs` is pure; :func:`run_redteam` wires serving, Ray Data and judging.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayalign.config import EvalConfig, ModelConfig
from rayalign.data.schema import pair_id
from rayalign.errors import UserError
from rayalign.eval.judges import JudgeInput

REPLACEMENT_CHAR = "\ufffd"


def build_pairs(
    prompts: Sequence[dict[str, Any]],
    samples: dict[str, list[dict[str, Any]]],
    preferences: dict[str, float | None],
    *,
    source: str,
) -> tuple[list[dict[str, Any]], Counter]:
    """Canonical pairs from judged samples; also counts why prompts were skipped.

    ``samples[id]`` are the judged responses (``completion``, ``harm_label``) of prompt
    ``id``; ``preferences[id]`` is the ranker's verdict on the first two (1 = first more
    helpful). A tie puts the safe response first; an undecided ranking (``None``: the
    ranker answered outside ``A``/``B``/``tie``) skips the prompt (``ranker_undecided``)
    rather than guessing an order.
    """
    pairs, skipped = [], Counter()
    for row in prompts:
        got = [s for s in samples.get(row["id"], []) if not s.get("error")]
        if len(got) < 2:
            skipped["generation_failed"] += 1
            continue
        a, b = got[0], got[1]
        if a["harm_label"] is None or b["harm_label"] is None:
            skipped["judge_undecided"] += 1
            continue
        if a["harm_label"] == 0 and b["harm_label"] == 0:
            skipped["no_harmful_response"] += 1
            continue
        # U+FFFD marks bytes the model emitted that do not decode (a partial UTF-8 sequence):
        # an artefact, not content, and training validation rejects it, so drop the marks.
        a = {**a, "completion": a["completion"].replace(REPLACEMENT_CHAR, "").strip()}
        b = {**b, "completion": b["completion"].replace(REPLACEMENT_CHAR, "").strip()}
        if a["completion"] == b["completion"]:
            skipped["identical_responses"] += 1
            continue
        if not a["completion"] or not b["completion"]:
            skipped["empty_response"] += 1
            continue
        pref = preferences.get(row["id"])
        if pref is None:
            skipped["ranker_undecided"] += 1
            continue
        a_safe, b_safe = a["harm_label"] == 0, b["harm_label"] == 0
        # A tie puts the safe response first.
        first = (a_safe or not b_safe) if pref == 0.5 else pref == 1.0
        chosen, rejected = (a, b) if first else (b, a)
        chosen_safe, rejected_safe = (a_safe, b_safe) if first else (b_safe, a_safe)
        pairs.append({
            "id": pair_id(row["prompt"], chosen["completion"], rejected["completion"], chosen_safe, rejected_safe),
            "source": source,
            "prompt": row["prompt"],
            "chosen": chosen["completion"],
            "rejected": rejected["completion"],
            "chosen_safe": chosen_safe,
            "rejected_safe": rejected_safe,
        })
    return pairs, skipped


def load_redteam_prompts(spec: str, eval_cfg: EvalConfig) -> list[dict[str, Any]]:
    """A benchmark spec (``advbench``, ``xstest:PATH``...) or a prompts file; harmful rows only."""
    from rayalign.eval.benchmarks import LOADERS, load_benchmark

    name = spec.partition(":")[0].strip().lower().replace("-", "_")
    if name not in LOADERS or Path(spec).is_file():
        spec = f"custom:{spec}"
    records = load_benchmark(spec, data_dir=eval_cfg.data_dir, limit=eval_cfg.limit, seed=eval_cfg.seed)
    harmful = [r for r in records if r["kind"] == "harmful"]
    if not harmful:
        raise UserError(f"{spec}: no harmful prompts to red-team")
    return harmful


def run_redteam(
    model_cfg: ModelConfig, eval_cfg: EvalConfig, prompts_spec: str, output: str | Path
) -> dict[str, Any]:
    """Sample, judge, rank, keep harmful prompts, write the pairs JSONL; returns a summary."""
    from dataclasses import replace

    from rayalign.eval.generate import generate
    from rayalign.eval.report import write_json, write_jsonl
    from rayalign.eval.runner import _ranker, build_judges, generation_settings, served
    from rayalign.serve.server import ensure_ray

    prompts = load_redteam_prompts(prompts_spec, eval_cfg)
    ensure_ray()
    settings = replace(generation_settings(eval_cfg), temperature=eval_cfg.redteam_temperature,
                       score_references=False)
    requests = [{**r, "id": f"{r['id']}#{k}", "prompt_id": r["id"]}
                for r in prompts for k in range(eval_cfg.redteam_samples)]
    with contextlib.ExitStack() as stack:
        judge, _ = build_judges(eval_cfg, stack)
        with served(model_cfg, eval_cfg) as endpoint:
            rows = generate(requests, endpoint, settings, concurrency=eval_cfg.concurrency, desc="sampling")
        ok = [r for r in rows if not r.get("error")]
        verdicts = judge.judge([JudgeInput(r["prompt"], r["completion"], r.get("context")) for r in ok])
        for row, verdict in zip(ok, verdicts, strict=True):
            row["harm_label"], row["harm_reason"] = verdict.label, verdict.reason
        samples: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            samples.setdefault(row["prompt_id"], []).append(row)
        ranker = _ranker(eval_cfg)
        good = {pid: [x for x in s if not x.get("error")] for pid, s in samples.items()}
        ranked = [pid for pid, s in good.items() if len(s) >= 2]
        items = [(good[pid][0]["prompt"], good[pid][0]["completion"], good[pid][1]["completion"])
                 for pid in ranked]
        preferences = dict(zip(ranked, ranker.prefer(items), strict=True))
    source = f"redteam:{Path(model_cfg.name_or_path).name}"
    pairs, skipped = build_pairs(prompts, samples, preferences, source=source)
    output = Path(output).expanduser()
    write_jsonl(output, pairs)
    summary = {
        "prompts": len(prompts),
        "samples": len(rows),
        "harmful_samples": sum(1 for r in rows if r.get("harm_label") == 1),
        "pairs": len(pairs),
        "skipped": dict(skipped),
        "judge": judge.name,
        "ranker": ranker.name,
        "generation": settings.as_dict(),
        "output": str(output),
    }
    write_json(output.with_name(output.stem + ".summary.json"), summary)
    return summary
