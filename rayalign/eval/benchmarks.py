"""Benchmark loaders: every safety benchmark becomes the same list of prompt records.

A record is a plain dict (Ray Data rows are dicts)::

    {"id", "benchmark", "prompt", "kind": "harmful" | "benign", "category",
     "mode": "chat" | "continuation", "reference": str | None, "context": str | None}

``kind`` decides what a prompt measures: harmful prompts measure harmlessness (the model
should refuse or stay safe), benign prompts measure over-refusal / helpfulness (the model
should comply). ``mode="continuation"`` (RealToxicityPrompts) sends raw text to
``/v1/completions`` instead of a chat turn.

A benchmark is named ``NAME``, ``NAME:PATH`` or either with ``@N`` at the end (a seeded,
kind-stratified subset of N prompts, e.g. ``advbench@100``). Without a path, the file is
looked up under ``data_dir`` (the layout of ``../shared/data``), then in the copies shipped
inside the package (AdvBench's harmful behaviours, MIT, and XSTest's prompts, CC-BY-4.0:
``rayalign/resources/benchmarks``, licences and attribution beside them), then on the
Hugging Face Hub when online; offline, the error says what to pass instead.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayalign.errors import UserError
from rayalign.textio import read_rows

logger = logging.getLogger("rayalign.eval")

Record = dict[str, Any]

#: Benchmark files shipped inside the package (permissive licences; see the README there).
BUNDLED_PACKAGE = "rayalign.resources.benchmarks"
BUNDLED_FILES = ("advbench/harmful_behaviors.csv", "xstest/xstest_prompts.csv")


def make_record(
    benchmark: str, index: int, prompt: str, kind: str, category: str = "", *,
    mode: str = "chat", reference: str | None = None, context: str | None = None, id: str | None = None,
) -> Record:
    return {
        "id": id or f"{benchmark}-{index}",
        "benchmark": benchmark,
        "prompt": prompt,
        "kind": kind,
        "category": category or "uncategorized",
        "mode": mode,
        "reference": reference,
        "context": context,
    }


# --------------------------------------------------------------------------- file reading

def _field(row: dict, names: tuple[str, ...], path: Path | str, number: int) -> str:
    for name in names:
        value = row.get(name)
        if value not in (None, ""):
            return value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict) else str(value)
    raise UserError(f"{path}: row {number}: missing field {names[0]!r} (columns: {', '.join(row)})")


def _hub_rows(hub_id: str, benchmark: str, config: str | None = None, split: str = "train") -> list[dict]:
    from rayalign.modeling.hub import require_hub

    require_hub(f"benchmark {benchmark!r} (hub id {hub_id}; pass {benchmark}:PATH or --data-dir DIR)")
    import datasets

    return list(datasets.load_dataset(hub_id, config, split=split))


def _locate(benchmark: str, path: str | None, data_dir: str | None, relative: tuple[str, ...]) -> Path | None:
    """The benchmark's file: ``path``, else under ``data_dir``, else the bundled copy;
    ``None`` means "load the hub id". A ``data_dir`` without the file either fails (Hub
    unreachable: names the paths it looked for) or warns that the hub copy is used."""
    if path:
        found = Path(path).expanduser()
        if not found.is_file():
            raise UserError(f"benchmark {benchmark!r}: file not found: {found}")
        return found
    if data_dir and not Path(data_dir).expanduser().is_dir():
        _warn_missing_data_dir(data_dir)
    tried = [Path(data_dir).expanduser() / rel for rel in relative] if data_dir else []
    for candidate in tried:
        if candidate.is_file():
            return candidate
    for rel in relative:
        if rel in BUNDLED_FILES:
            return bundled_path(rel)
    if tried:
        from rayalign.modeling.hub import hub_reachable

        looked = ", ".join(str(t) for t in tried)
        if not hub_reachable():
            raise UserError(f"benchmark {benchmark!r}: not in the data dir (looked for {looked}) and the "
                            f"Hugging Face Hub cannot be reached; fix --data-dir or pass {benchmark}:PATH")
        logger.warning(f"benchmark {benchmark!r}: not in the data dir (looked for {looked}); loading its "
                       "hub id instead, whose prompts can differ from a local copy")
    return None


@functools.cache
def _warn_missing_data_dir(data_dir: str) -> None:
    """Once per folder: a typo in --data-dir would otherwise pass unnoticed (bundled copies
    of AdvBench and XSTest are used instead)."""
    logger.warning(f"data dir {data_dir} does not exist; using rayalign's bundled benchmark copies "
                   "where there are some")


def bundled_path(rel: str) -> Path:
    """Filesystem path of a benchmark file shipped with rayalign (``BUNDLED_FILES``)."""
    from importlib.resources import files

    resource = files(BUNDLED_PACKAGE).joinpath(rel)
    if not isinstance(resource, Path) or not resource.is_file():
        raise UserError(f"rayalign's bundled benchmark file is missing: {resource}; reinstall rayalign")
    return resource


# --------------------------------------------------------------------------- loaders

def load_advbench(path: str | None = None, data_dir: str | None = None) -> list[Record]:
    """AdvBench harmful behaviours (``goal``; ``target`` kept as the reference string)."""
    found = _locate("advbench", path, data_dir, ("advbench/harmful_behaviors.csv",))
    rows = read_rows(found) if found else _hub_rows("walledai/AdvBench", "advbench")
    where = found or "walledai/AdvBench"
    return [
        make_record(
            "advbench", i, _field(r, ("goal", "prompt"), where, i + 1), "harmful", "harmful_behaviors",
            reference=r.get("target") or None,
        )
        for i, r in enumerate(rows)
    ]


def load_harmbench(path: str | None = None, data_dir: str | None = None) -> list[Record]:
    """HarmBench text behaviours (``Behavior``, ``SemanticCategory``, optional ``ContextString``)."""
    found = _locate("harmbench", path, data_dir, (
        "harmbench/harmbench_behaviors_text_all.csv", "harmbench/harmbench_behaviors_text_test.csv",
    ))
    rows = read_rows(found) if found else _hub_rows("walledai/HarmBench", "harmbench", "standard")
    where = found or "walledai/HarmBench"
    records = []
    for i, r in enumerate(rows):
        behavior = _field(r, ("Behavior", "prompt", "behavior"), where, i + 1)
        context = r.get("ContextString") or r.get("context") or None
        # Contextual behaviours are asked with their context, as HarmBench does.
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        records.append(make_record(
            "harmbench", i, prompt, "harmful",
            r.get("SemanticCategory") or r.get("category") or "", context=context,
            id=r.get("BehaviorID") or None,
        ))
    return records


def load_xstest(path: str | None = None, data_dir: str | None = None) -> list[Record]:
    """XSTest: ``unsafe`` (contrast) prompts measure harmlessness, ``safe`` ones over-refusal."""
    found = _locate("xstest", path, data_dir, ("xstest/xstest_prompts.csv",))
    rows = read_rows(found) if found else _hub_rows("walledai/XSTest", "xstest", split="test")
    where = found or "walledai/XSTest"
    records = []
    for i, r in enumerate(rows):
        label = _field(r, ("label",), where, i + 1).strip().lower()
        if label not in ("safe", "unsafe"):
            raise UserError(f"{where}: row {i + 1}: field 'label' must be safe or unsafe, not {label!r}")
        records.append(make_record(
            "xstest", i, _field(r, ("prompt",), where, i + 1), "harmful" if label == "unsafe" else "benign",
            r.get("type") or "", id=f"xstest-{r['id']}" if r.get("id") else None,
        ))
    return records


def load_beavertails(path: str | None = None, data_dir: str | None = None) -> list[Record]:
    """BeaverTails evaluation prompts (all harmful; ``category`` when present)."""
    found = _locate("beavertails", path, data_dir, ("beavertails_eval/BeaverTails.json",))
    rows = read_rows(found) if found else _hub_rows(
        "PKU-Alignment/BeaverTails-Evaluation", "beavertails", split="test"
    )
    where = found or "PKU-Alignment/BeaverTails-Evaluation"
    return [
        make_record("beavertails", i, _field(r, ("prompt",), where, i + 1), "harmful", r.get("category") or "")
        for i, r in enumerate(rows)
    ]


_ALERT_WRAPPER = re.compile(r"^\s*###\s*Instruction:\s*(.*?)\s*###\s*Response:\s*$", re.S)


def _alert(name: str, config: str) -> Callable[[str | None, str | None], list[Record]]:
    def load(path: str | None = None, data_dir: str | None = None) -> list[Record]:
        """ALERT red-teaming prompts; the Alpaca-style wrapper is stripped (we apply chat templates)."""
        found = _locate(name, path, data_dir, (f"alert/{config}.jsonl",))
        rows = read_rows(found) if found else _hub_rows("Babelscape/ALERT", name, config, split="test")
        where = found or "Babelscape/ALERT"
        records = []
        for i, r in enumerate(rows):
            text = _field(r, ("prompt",), where, i + 1)
            match = _ALERT_WRAPPER.match(text)
            category = r.get("category") or ""
            if r.get("attack_type"):
                category = f"{category}/{r['attack_type']}" if category else r["attack_type"]
            records.append(make_record(
                name, i, match.group(1) if match else text, "harmful", category,
                id=f"{name}-{r['id']}" if r.get("id") is not None else None,
            ))
        return records

    return load


def load_realtoxicity(path: str | None = None, data_dir: str | None = None) -> list[Record]:
    """RealToxicityPrompts: continue ``prompt.text`` as raw text; needs a harm judge."""
    found = _locate("realtoxicity", path, data_dir, ("realtoxicityprompts/prompts.jsonl",))
    rows = read_rows(found) if found else _hub_rows("allenai/real-toxicity-prompts", "realtoxicity")
    where = found or "allenai/real-toxicity-prompts"
    records = []
    for i, r in enumerate(rows):
        prompt = r.get("prompt")
        text = prompt.get("text") if isinstance(prompt, dict) else prompt
        if not text:
            raise UserError(f"{where}: row {i + 1}: missing field 'prompt.text'")
        category = "challenging" if r.get("challenging") else "regular"
        records.append(make_record("realtoxicity", i, text, "harmful", category, mode="continuation"))
    return records


def load_custom(path: str | None = None, data_dir: str | None = None, name: str = "custom") -> list[Record]:
    """A JSONL/CSV of ``prompt`` [+ ``kind``, ``category``, ``reference``, ``id``, ``mode``]."""
    if not path:
        raise UserError("the custom benchmark needs a file: custom:PATH.jsonl")
    found = _locate(name, path, None, ())
    assert found is not None
    records = []
    rows_by_id: dict[str, int] = {}
    no_kind = 0
    for i, r in enumerate(read_rows(found)):
        where = f"{found}: row {i + 1}"
        prompt = r.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            if "prompt" not in r:
                what = "is missing"
            elif prompt is None or isinstance(prompt, str):
                what = "is empty"
            elif isinstance(prompt, list):
                what = "must be text, not a list (a message list is not supported here)"
            else:
                what = f"must be text, not {prompt!r}"
            raise UserError(f"{where}: field 'prompt' {what} (columns: {', '.join(r)})")
        kind = r.get("kind")
        if kind in (None, ""):
            no_kind += 1
            kind = "harmful"
        if not isinstance(kind, str) or kind.strip().lower() not in ("harmful", "benign"):
            raise UserError(f"{where}: field 'kind' must be harmful or benign, not {kind!r}")
        mode = r.get("mode") or "chat"
        if mode not in ("chat", "continuation"):
            raise UserError(f"{where}: field 'mode' must be chat or continuation")
        record = make_record(
            name, i, prompt, kind.strip().lower(), r.get("category") or "", mode=mode,
            reference=r.get("reference") or None, id=str(r["id"]) if r.get("id") not in (None, "") else None,
        )
        if record["id"] in rows_by_id:  # results are keyed by id: one would overwrite the other
            raise UserError(f"{where}: id {record['id']!r} is also row {rows_by_id[record['id']]}; ids must be unique")
        rows_by_id[record["id"]] = i + 1
        records.append(record)
    if no_kind:
        logger.info(f"{found}: {no_kind} of {len(records)} prompts have no 'kind'; they count as harmful")
    return records


def load_demo(path: str | None = None, data_dir: str | None = None) -> list[Record]:
    """The demo's held-out prompts (harmful and benign) shipped with rayalign."""
    if path:
        return load_custom(path, name="demo")
    from rayalign.demo_data import load_eval_prompts

    return [
        make_record("demo", i, r["prompt"], r["kind"], r.get("category") or "", reference=r.get("reference"))
        for i, r in enumerate(load_eval_prompts())
    ]


def load_demo_validation(path: str | None = None, data_dir: str | None = None) -> list[Record]:
    """The demo's validation prompts: for choosing settings (sweeps), never reported as results.

    Written for rayalign in the categories the over-refusal literature describes, disjoint
    from the demo's training pairs, its held-out prompts and every bundled benchmark.
    """
    if path:
        return load_custom(path, name="demo_validation")
    from rayalign.demo_data import load_validation_prompts

    return [
        make_record("demo_validation", i, r["prompt"], r["kind"], r.get("category") or "")
        for i, r in enumerate(load_validation_prompts())
    ]


LOADERS: dict[str, Callable[..., list[Record]]] = {
    "advbench": load_advbench,
    "harmbench": load_harmbench,
    "xstest": load_xstest,
    "beavertails": load_beavertails,
    "alert": _alert("alert", "alert"),
    "alert_adversarial": _alert("alert_adversarial", "alert_adversarial"),
    "realtoxicity": load_realtoxicity,
    "custom": load_custom,
    "demo": load_demo,
    "demo_validation": load_demo_validation,
}


_SPEC_LIMIT = re.compile(r"@(\d+)\s*$")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"xstest"`` -> (xstest, None); ``"custom:/p/x.jsonl@50"`` -> (custom, /p/x.jsonl)."""
    name, sep, path = _SPEC_LIMIT.sub("", spec.strip()).partition(":")
    if "@" in (path if sep else name):
        raise UserError(f"benchmark {spec.strip()!r}: the subset size after '@' must be a whole number ≥ 1")
    name = name.strip().lower().replace("-", "_")
    if name not in LOADERS:
        raise UserError(f"unknown benchmark {name!r}; choose from {', '.join(LOADERS)} "
                        "(optionally NAME:PATH, and @N for a seeded subset of N prompts)")
    return name, (path.strip() or None) if sep else None


def absolute_paths(benchmarks: list[str], data_dir: str | None, cwd: Path) -> tuple[list[str], str | None]:
    """``benchmarks`` and ``data_dir`` with relative file paths made absolute against ``cwd``.

    For evaluations that run in another working directory (a Tune trial runs in its own
    folder): ``"custom:p.jsonl@5"`` -> ``"custom:/cwd/p.jsonl@5"``, ``"../data"`` ->
    ``"/data"``. Specs without a path are unchanged.
    """
    def absolute(path: str) -> str:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else (cwd / p).resolve())

    specs = []
    for spec in benchmarks:
        name, path = parse_spec(spec)
        limit = spec_limit(spec)
        specs.append(spec if path is None else f"{name}:{absolute(path)}" + (f"@{limit}" if limit else ""))
    return specs, absolute(data_dir) if data_dir else None


def spec_limit(spec: str) -> int | None:
    """The ``@N`` subset size at the end of a benchmark spec, if any (N ≥ 1)."""
    match = _SPEC_LIMIT.search(spec)
    if match is None:
        return None
    if int(match.group(1)) < 1:
        raise UserError(f"benchmark {spec!r}: the subset size after '@' must be at least 1")
    return int(match.group(1))


def load_benchmark(spec: str, *, data_dir: str | None = None, limit: int | None = None, seed: int = 0) -> list[Record]:
    """Load one benchmark; ``limit`` (or ``@N`` in the spec, which wins) keeps a seeded
    random subset, stratified by kind so a small limit still measures both harmlessness and
    helpfulness. The same spec, data and seed always give the same prompts."""
    name, path = parse_spec(spec)
    limit = spec_limit(spec) or limit
    records = LOADERS[name](path, data_dir)
    if not records:
        raise UserError(f"benchmark {spec!r} has no prompts")
    if limit is not None and limit < len(records):
        records = [records[i] for i in stratified_subset([r["kind"] for r in records], limit, seed)]
    return records


def stratified_subset(kinds: list[str], limit: int, seed: int = 0) -> list[int]:
    """``limit`` indices drawn in turn from each kind's seeded shuffle, in original order."""
    rng = random.Random(seed)
    pools: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds):
        pools.setdefault(kind, []).append(index)
    for pool in pools.values():
        rng.shuffle(pool)
    keep: list[int] = []
    while len(keep) < limit:
        for pool in pools.values():
            if pool and len(keep) < limit:
                keep.append(pool.pop())
    return sorted(keep)
