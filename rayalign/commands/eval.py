"""``rayalign eval``: safety benchmarks on served models; ``rayalign eval calibrate``: judge vs humans."""

from __future__ import annotations

import argparse
import json
import sys

from rayalign.commands.common import add_overrides


def _judge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", default=None, help="refusal (=xstest), gcg (=advbench), harmbench, llamaguard, llm")
    parser.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL of a served judge model")
    parser.add_argument("--judge-model", default=None, help="or: a judge model (path/name) to serve locally")
    parser.add_argument("--judge-prompt", default=None, help="file with the llm judge's template ({prompt}, {completion})")
    parser.add_argument("--api-key", default=None, help="Bearer key for the served endpoints")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate models on safety benchmarks through Ray Serve (report, JSON, plots)",
        description="Serves each model (Ray Serve, OpenAI-compatible HTTP), sends benchmark prompts "
        "through Ray Data, judges the completions and writes metrics.json, report.md and PNG plots. "
        "`rayalign eval calibrate` measures a judge against human labels.",
    )
    parser.add_argument("--model", action="append", default=[], help="model path/name (repeat to compare; default: the config's model, "
                        "else the built-in smollm2-135m-instruct)")
    parser.add_argument("--baseline", default=None, help="baseline model for win rates")
    parser.add_argument("--benchmarks", default=None, help="comma-separated, e.g. advbench,xstest,demo or custom:FILE "
                        "(default: demo, the 153 held-out demo prompts)")
    parser.add_argument("--limit", type=int, default=None, help="prompts per benchmark (seeded subset)")
    parser.add_argument("--data-dir", default=None, help="folder with benchmark files (layout of ../shared/data)")
    parser.add_argument("--endpoint", default=None, help="use this running OpenAI-compatible server for --model")
    parser.add_argument("--backend", choices=("auto", "transformers", "vllm"), default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=None, help="requests in flight")
    parser.add_argument("--ranker", choices=("heuristic", "llm"), default=None, help="win-rate ranker")
    parser.add_argument("--ranker-url", default=None)
    parser.add_argument("--output-dir", default=None, help="default eval.output_dir (outputs/eval)")
    parser.add_argument("--config", default=None, help="YAML config (its eval and model sections)")
    add_overrides(parser, "eval.max_new_tokens=64")
    _judge_options(parser)
    parser.set_defaults(func=run_eval_command)

    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    calibrate = verbs.add_parser(
        "calibrate",
        help="agreement, precision, recall and confusion matrix of a judge against human labels",
        description="Labels file(s): CSV or JSONL with prompt, completion and a label (1 = complies / "
        "harmful, 0 = refuses / safe). XSTest's final_label (1_full_compliance -> 1, "
        "2_full_refusal / 3_partial_refusal -> 0) is understood. Prints one JSON object.",
    )
    calibrate.add_argument("--labels", nargs="+", required=True, help="CSV/JSONL file(s)")
    calibrate.add_argument("--label-column", default="auto", help="default: label, or final_label when present")
    calibrate.add_argument("--positive", default=None, help="comma-separated label values meaning 'complies' (1)")
    calibrate.add_argument("--negative", default=None, help="comma-separated label values meaning 'refuses' (0)")
    calibrate.add_argument("--prompt-column", default="prompt")
    calibrate.add_argument("--completion-column", default="completion")
    _judge_options(calibrate)
    calibrate.set_defaults(func=run_calibrate)


def _judge_prompt(path: str) -> str:
    from rayalign.errors import UserError
    from rayalign.textio import read_text

    try:
        return read_text(path)
    except OSError as exc:
        raise UserError(f"--judge-prompt {path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"--judge-prompt {path}: not UTF-8 text ({exc})") from exc


def _eval_config(args: argparse.Namespace):

    from rayalign.config import load_config

    cfg = load_config(args.config, args.overrides)
    updates = {
        "judge": args.judge, "judge_url": args.judge_url, "judge_model": args.judge_model,
        "api_key": args.api_key,
        "judge_prompt": _judge_prompt(args.judge_prompt) if args.judge_prompt else None,
    }
    for name in ("limit", "data_dir", "endpoint", "backend", "max_new_tokens", "temperature", "concurrency",
                 "ranker", "ranker_url", "output_dir"):
        updates[name] = getattr(args, name, None)
    if getattr(args, "benchmarks", None) is not None:  # "" names no benchmark: refused below
        updates["benchmarks"] = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    from pydantic import ValidationError

    from rayalign.config import ConfigError, error_message

    changes = {key: value for key, value in updates.items() if value is not None}
    try:  # all at once: --judge harmbench is valid only together with --judge-url/--judge-model
        cfg.eval = type(cfg.eval).model_validate({**cfg.eval.model_dump(), **changes})
    except ValidationError as exc:  # e.g. --limit 0: the config file's short message
        err = exc.errors()[0]
        key = err["loc"][0] if err["loc"] else None
        if key in changes:
            flag = "--" + str(key).replace("_", "-")
            raise ConfigError(f"{flag} {changes[key]!r}: eval.{key}: {error_message(err)}") from None
        raise ConfigError(f"eval: {error_message(err)}") from None
    return cfg


def run_eval_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rayalign.errors import UserError
    from rayalign.eval.runner import load_prompts, run_eval
    from rayalign.ray_session import eval_need, init_ray
    from rayalign.serve.server import serve_running

    cfg = _eval_config(args)
    models = [cfg.model.model_copy(update={"name_or_path": m}) for m in args.model] or [cfg.model]
    if cfg.eval.endpoint and len(models) > 1:
        raise UserError("--endpoint serves one model; give a single --model")
    baseline = cfg.model.model_copy(update={"name_or_path": args.baseline}) if args.baseline else None
    records = load_prompts(cfg.eval)  # a missing or broken benchmark file fails before Ray starts
    if not cfg.eval.endpoint:
        from rayalign.modeling.models import resolve_model_path

        judge = [cfg.eval.judge_model] if cfg.eval.judge_model and not cfg.eval.judge_url else []
        for name in [*(m.name_or_path for m in models), *([baseline.name_or_path] if baseline else []), *judge]:
            resolve_model_path(name)  # a missing folder fails before Ray starts
        init_ray(need=eval_need(cfg.eval))
    out = Path(cfg.eval.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from rayalign.console import log_to

    log_to(out)
    cfg.save(out / "config.yaml")
    started_here = not serve_running()
    try:
        results = run_eval(models, cfg.eval, out, baseline=baseline, tracking=cfg.train.tracking,
                           records=records)
    finally:
        if started_here:
            from ray import serve

            from rayalign.console import mute_ray

            mute_ray()  # Serve's import-time console handler would log its shutdown lines
            serve.shutdown()
    from rayalign.eval.report import summary_lines

    for line in summary_lines(results):
        print(f"[rayalign] {line}")
    files = results["files"]
    print(f"[rayalign] report: {files['report']}  metrics: {files['metrics']}  ({len(files['plots'])} plots)")
    if results.get("tracking_run"):
        print(f"[rayalign] tracking run: {results['tracking_run']}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    import contextlib

    from rayalign.config import EvalConfig
    from rayalign.eval.calibrate import agreement_metrics, load_labels
    from rayalign.eval.judges import JudgeInput
    from rayalign.eval.runner import build_judges
    from rayalign.textio import read_text

    items = load_labels(
        args.labels, label_column=args.label_column,
        positive=args.positive.split(",") if args.positive else None,
        negative=args.negative.split(",") if args.negative else None,
        prompt_column=args.prompt_column, completion_column=args.completion_column,
    )
    judge_name = args.judge or "refusal"
    eval_cfg = EvalConfig(
        judge=judge_name, refusal_judge=judge_name, judge_url=args.judge_url, judge_model=args.judge_model,
        api_key=args.api_key, judge_prompt=read_text(args.judge_prompt) if args.judge_prompt else None,
    )
    with contextlib.ExitStack() as stack:
        if args.judge_model:
            from rayalign.serve.server import ensure_ray

            ensure_ray()
        judge, _ = build_judges(eval_cfg, stack)
        verdicts = judge.judge([JudgeInput(i.prompt, i.completion) for i in items])
    result = {"judge": judge.name, "files": list(args.labels),
              **agreement_metrics([i.label for i in items], [v.label for v in verdicts])}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0
