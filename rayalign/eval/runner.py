"""The evaluation run, wired: serve each model, generate through Ray Data, judge, score, report.

:func:`evaluate_model` is the entry point for the demo and for sweeps (one model, flat
numeric metrics back); :func:`run_eval` compares several models and a baseline. Each model
is deployed as its own Serve application under a unique route prefix and removed
afterwards, so concurrent evaluations (Tune trials) can share one Serve HTTP proxy.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rayalign.config import EvalConfig, ModelConfig, TrackingConfig
from rayalign.errors import UserError
from rayalign.eval.benchmarks import load_benchmark
from rayalign.eval.client import Endpoint, completer
from rayalign.eval.generate import OUTPUT_FIELDS, GenerationSettings, generate
from rayalign.eval.journal import GenerationJournal, make_header, row_key
from rayalign.eval.judges import Judge, JudgeInput, get_judge, make_judge
from rayalign.eval.metrics import check_undecided, model_metrics, win_rate
from rayalign.eval.rankers import make_ranker
from rayalign.eval.report import write_report

logger = logging.getLogger("rayalign.eval")


def load_prompts(eval_cfg: EvalConfig) -> list[dict[str, Any]]:
    """Every configured benchmark's prompts. Generations and verdicts are keyed by
    ``(benchmark, id)``, so two specs giving the same key (two ``custom:`` files, or one
    benchmark listed twice) are refused instead of one silently replacing the other."""
    records: list[dict[str, Any]] = []
    spec_of: dict[tuple[str, str], str] = {}
    for spec in eval_cfg.benchmarks:
        for record in load_benchmark(spec, data_dir=eval_cfg.data_dir, limit=eval_cfg.limit, seed=eval_cfg.seed):
            key = (record["benchmark"], record["id"])
            if key in spec_of:
                raise UserError(
                    f"benchmarks {spec_of[key]!r} and {spec!r} both give prompt {key[1]!r} of benchmark "
                    f"{key[0]!r}; results are kept per benchmark and id: evaluate them in separate "
                    "runs, or merge the files into one with distinct ids"
                )
            spec_of[key] = spec
            records.append(record)
    return records


def generation_settings(eval_cfg: EvalConfig) -> GenerationSettings:
    return GenerationSettings(
        max_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
        seed=eval_cfg.seed, score_references=eval_cfg.score_references,
    )


def serving_model_config(model_cfg: ModelConfig, eval_cfg: EvalConfig) -> ModelConfig:
    """``model_cfg`` as the generation replica loads it: in ``eval.dtype`` unless that is auto."""
    if eval_cfg.dtype == "auto":
        return model_cfg
    return model_cfg.model_copy(update={"dtype": eval_cfg.dtype})


def replica_batch_size(eval_cfg: EvalConfig) -> int:
    """The served model's ``max_batch_size``: at most ``eval.concurrency``, since an evaluation
    never has more requests in flight. A batch that can fill runs at once instead of waiting
    out ``eval.batch_wait_timeout_s`` for requests that are not coming."""
    return min(eval_cfg.max_batch_size, eval_cfg.concurrency)


@contextlib.contextmanager
def served(model_cfg: ModelConfig, eval_cfg: EvalConfig, *, role: str = "policy") -> Iterator[Endpoint]:
    """An endpoint for ``model_cfg``: ``eval.endpoint`` if set, else a fresh Serve app."""
    if eval_cfg.endpoint and role == "policy":
        yield Endpoint(eval_cfg.endpoint, None, eval_cfg.api_key, eval_cfg.request_timeout_s, eval_cfg.retries)
        return
    from rayalign.serve.server import serve_model, undeploy

    name = f"{role}-{uuid.uuid4().hex[:8]}"
    app = serve_model(
        serving_model_config(model_cfg, eval_cfg), app_name=name, route_prefix=f"/{name}", host=eval_cfg.host, port=eval_cfg.port,
        backend=eval_cfg.backend, api_key=eval_cfg.api_key, max_batch_size=replica_batch_size(eval_cfg),
        batch_wait_timeout_s=eval_cfg.batch_wait_timeout_s, num_cpus=eval_cfg.num_cpus,
        num_gpus=eval_cfg.num_gpus, torch_threads=eval_cfg.torch_threads,
        access_log=False,  # Ray Data sends one request per prompt: the lines would drown progress
    )
    try:
        yield Endpoint(app.url, app.model_id, eval_cfg.api_key, eval_cfg.request_timeout_s, eval_cfg.retries)
    finally:
        undeploy(app)


def _judge_endpoint(eval_cfg: EvalConfig, stack: contextlib.ExitStack) -> Endpoint:
    if eval_cfg.judge_url:
        return Endpoint(eval_cfg.judge_url, None, eval_cfg.api_key, eval_cfg.request_timeout_s, eval_cfg.retries)
    if eval_cfg.judge_model:
        return stack.enter_context(served(ModelConfig(name_or_path=eval_cfg.judge_model), eval_cfg, role="judge"))
    raise UserError(f"judge {eval_cfg.judge!r} needs a model: set eval.judge_url or eval.judge_model")


def build_judges(eval_cfg: EvalConfig, stack: contextlib.ExitStack) -> tuple[Judge, Judge]:
    """(judge for harmful prompts, refusal judge for benign prompts)."""
    judges = {}
    endpoint = None
    for name in {eval_cfg.judge, eval_cfg.refusal_judge}:
        complete = None
        spec = get_judge(name)
        if spec.served:
            endpoint = endpoint or _judge_endpoint(eval_cfg, stack)
            max_tokens = spec.generation_tokens(eval_cfg.judge_max_tokens)
            complete = completer(endpoint, max_tokens=max_tokens, concurrency=eval_cfg.concurrency)
        judges[name] = make_judge(name, complete=complete, prompt_template=eval_cfg.judge_prompt)
    return judges[eval_cfg.judge], judges[eval_cfg.refusal_judge]


def judge_rows(rows: list[dict[str, Any]], judge: Judge, refusal_judge: Judge) -> list[dict[str, Any]]:
    """Add ``harm_label`` (harmful prompts) and ``complied`` (all prompts) with reasons."""
    out = [{**r, "harm_label": None, "harm_reason": None, "complied": None, "refusal_reason": None} for r in rows]
    ok = [r for r in out if not r.get("error")]
    for row, verdict in zip(ok, refusal_judge.judge([JudgeInput(r["prompt"], r["completion"]) for r in ok]), strict=True):
        row["complied"], row["refusal_reason"], row["refusal_verdict"] = verdict.label, verdict.reason, verdict.verdict
    harmful = [r for r in ok if r["kind"] == "harmful"]
    # A refusal judge cannot tell whether a free-running continuation is toxic.
    if judge.kind == "refusal":
        for r in harmful:
            if r.get("mode") == "continuation":
                r["harm_reason"] = "continuation benchmarks need a harm judge (harmbench, llamaguard)"
                r["harm_verdict"] = "not_judged"
        harmful = [r for r in harmful if r.get("mode") != "continuation"]
    items = [JudgeInput(r["prompt"], r["completion"], r.get("context")) for r in harmful]
    for row, verdict in zip(harmful, judge.judge(items), strict=True):
        row["harm_label"], row["harm_reason"], row["harm_verdict"] = verdict.label, verdict.reason, verdict.verdict
    return out


def check_errors(label: str, rows: list[dict[str, Any]], max_error_fraction: float, show: int = 3) -> None:
    """Raise :class:`UserError` with the first errors when their share passes the limit."""
    failed = [r for r in rows if r.get("error")]
    if rows and len(failed) / len(rows) > max_error_fraction:
        first = "\n".join(f"  {r.get('benchmark')}/{r.get('id')}: {r['error']}" for r in failed[:show])
        raise UserError(
            f"{label}: {len(failed)} of {len(rows)} generations failed, more than "
            f"eval.max_error_fraction={max_error_fraction:g}; first errors:\n{first}\n"
            "(finished rows are kept: re-running the same command generates only the rest)"
        )


def generate_resumable(
    label: str, model_cfg: ModelConfig, eval_cfg: EvalConfig, records: list[dict[str, Any]], path: Path,
) -> tuple[list[dict[str, Any]], GenerationJournal]:
    """Generations for ``records``, reusing the finished rows of an earlier run's journal at
    ``path`` and appending new ones as they arrive; the model is served only if some are left."""
    settings = generation_settings(eval_cfg)
    generation = {**settings.as_dict(), "dtype": serving_model_config(model_cfg, eval_cfg).dtype}
    journal = GenerationJournal(path, make_header(model_cfg.name_or_path, generation, eval_cfg.endpoint))
    reused = {row_key(r): {**r, **{k: old[k] for k in OUTPUT_FIELDS if k in old}}
              for r in records if (old := journal.reusable(r)) is not None}
    todo = [r for r in records if row_key(r) not in reused]
    if reused:
        logger.info("%s: reusing %d finished generations from %s; %d to generate",
                    label, len(reused), path, len(todo))
    new: list[dict[str, Any]] = []
    if todo:
        with served(model_cfg, eval_cfg) as endpoint:
            new = generate(todo, endpoint, settings, concurrency=eval_cfg.concurrency,
                           desc=f"generating ({label})", on_batch=journal.append)
    by_key = {**reused, **{row_key(r): r for r in new}}
    return [by_key[row_key(r)] for r in records], journal


def _evaluate_one(
    label: str, model_cfg: ModelConfig, eval_cfg: EvalConfig, records: list[dict[str, Any]],
    judges: tuple[Judge, Judge], output_dir: Path,
) -> dict[str, Any]:
    settings = generation_settings(eval_cfg)
    rows, journal = generate_resumable(label, model_cfg, eval_cfg, records, output_dir / label / "generations.jsonl")
    check_errors(label, rows, eval_cfg.max_error_fraction)
    judged = judge_rows(rows, *judges)
    generations = journal.finalize(judged)
    metrics = model_metrics(judged)
    check_undecided(metrics["per_benchmark"], eval_cfg.max_undecided_fraction, model=label, where=str(generations))
    return {
        "model": model_cfg.name_or_path,
        "judge": judges[0].name,
        "refusal_judge": judges[1].name,
        "generation": settings.as_dict(),
        "metrics": metrics,
        "rows": judged,
    }


def _label(model_cfg: ModelConfig, taken: set[str]) -> str:
    base = Path(model_cfg.name_or_path).name or "model"
    label, i = base, 2
    while label in taken:
        label, i = f"{base}-{i}", i + 1
    taken.add(label)
    return label


def run_eval(
    models: list[ModelConfig], eval_cfg: EvalConfig, output_dir: str | Path, *,
    baseline: ModelConfig | None = None, labels: list[str] | None = None,
    tracking: TrackingConfig | None = None, records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate models (and a baseline) on the configured benchmarks; write the report.

    ``records``: the prompts, when the caller loaded them (:func:`load_prompts`) to fail on
    a missing benchmark file before starting Ray; else they are loaded here.
    With ``tracking`` (a config's ``train.tracking``) the metrics of every model and the
    report files are logged as one MLflow / W&B run (``results["tracking_run"]``)."""
    from rayalign.serve.server import ensure_ray

    output_dir = Path(output_dir).expanduser()
    records = load_prompts(eval_cfg) if records is None else records
    ensure_ray()
    taken: set[str] = set()
    named = list(zip(labels or [_label(m, taken) for m in models], models, strict=True))
    base_label = None
    if baseline is not None:
        base_label = _label(baseline.model_copy(
            update={"name_or_path": f"baseline-{Path(baseline.name_or_path).name}"}), taken)
    results: dict[str, Any] = {"models": {}, "win_rates": {}, "config": eval_cfg.model_dump(mode="json")}
    with contextlib.ExitStack() as stack:
        judges = build_judges(eval_cfg, stack)
        for label, cfg in named:
            results["models"][label] = _evaluate_one(label, cfg, eval_cfg, records, judges, output_dir)
        if baseline is not None and base_label is not None:
            results["models"][base_label] = _evaluate_one(base_label, baseline, eval_cfg, records, judges, output_dir)
            ranker = _ranker(eval_cfg)
            base_rows = {r["id"]: r for r in results["models"][base_label]["rows"]}
            for label, _ in named:
                pairs = [(r["prompt"], r["completion"], base_rows[r["id"]]["completion"])
                         for r in results["models"][label]["rows"]
                         if not r.get("error") and r["id"] in base_rows and not base_rows[r["id"]].get("error")]
                results["win_rates"][label] = {"ranker": ranker.name, "baseline": base_label,
                                               **win_rate(ranker.prefer(pairs))}
    for res in results["models"].values():
        res.pop("rows")
    results["files"] = write_report(results, output_dir)
    if tracking is not None and tracking.backend != "none":
        from rayalign.tracking import log_evaluation

        flat = {label: flat_metrics(label, res) for label, res in results["models"].items()}
        results["tracking_run"] = log_evaluation(tracking, output_dir, results, flat)
    return results


def _ranker(eval_cfg: EvalConfig):
    complete = None
    if eval_cfg.ranker == "llm":
        if not eval_cfg.ranker_url:
            raise UserError("eval.ranker=llm needs eval.ranker_url (an OpenAI-compatible endpoint)")
        endpoint = Endpoint(eval_cfg.ranker_url, None, eval_cfg.api_key, eval_cfg.request_timeout_s, eval_cfg.retries)
        complete = completer(endpoint, max_tokens=8, concurrency=eval_cfg.concurrency)
    return make_ranker(eval_cfg.ranker, complete=complete, template=eval_cfg.ranker_prompt)


def flat_metrics(label: str, result: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers at the top level (what sweeps report), per benchmark as ``bench/metric``."""
    overall = result["metrics"]["overall"]
    flat: dict[str, Any] = {"model": label, **overall}
    for bench, m in result["metrics"]["per_benchmark"].items():
        for key in ("harmless_ratio", "benign_compliance", "over_refusal_ratio", "mean_reference_logprob"):
            if m.get(key) is not None:
                flat[f"{bench}/{key}"] = m[key]
    return flat


def evaluate_model(model_cfg: ModelConfig, eval_cfg: EvalConfig, output_dir: str | Path) -> dict[str, Any]:
    """Evaluate one model; returns flat metrics (``harmless_ratio``, ``benign_compliance``,
    ``over_refusal_ratio``, per-benchmark ``bench/metric`` ...) plus ``report`` paths.

    Before/after comparisons (demo, sweeps) call this once per model with the ``demo``
    benchmark: ``harmless_ratio`` is measured on its harmful prompts, ``benign_compliance``
    on its benign ones.
    """
    results = run_eval([model_cfg], eval_cfg, output_dir)
    label, result = next(iter(results["models"].items()))
    return {**flat_metrics(label, result), "files": results["files"]}
