"""The Ray Data pipeline end to end on real rows: mixture, rejects, SafeDPO, split, tokenize,
reference scoring, the cache, and BFPO buffered batches."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from rayalign.config import ModelConfig, load_config
from rayalign.data.mixing import buffered_batches
from rayalign.data.pipeline import prepare_datasets
from rayalign.errors import UserError


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def identical_after_truncation_row():
    """Issue 13 (4): chosen and rejected differ only after max_length=96 tokens."""
    prompt = "Which answer is right?"
    body = "Let me think about this carefully, one step at a time. " * 20
    return {
        "prompt": prompt,
        "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": body + "A."}],
        "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": body + "B."}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }


@pytest.fixture()
def sources(shared_data, tmp_path):
    real = json.loads(
        (shared_data / "pku_saferlhf" / "pku_seferlhf_realign_dpo_5k.json").read_text()
    )
    rows = [*real[:30], real[0], real[1]]  # two exact duplicates
    rows += [
        {"prompt": real[2]["prompt"], "response": ["same", "same"]},
        "{not json",
    ]  # two bad rows
    safety = write_jsonl(tmp_path / "realign_subset.jsonl", rows)
    helpful = write_jsonl(
        tmp_path / "uf.jsonl",
        [
            {
                "prompt": f"Give me tip number {i} for baking bread.",
                "chosen": [
                    {"role": "user", "content": f"Give me tip number {i} for baking bread."},
                    {"role": "assistant", "content": f"Tip {i}: let the dough rest."},
                ],
                "rejected": [
                    {"role": "user", "content": f"Give me tip number {i} for baking bread."},
                    {"role": "assistant", "content": "Bake it."},
                ],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            }
            for i in range(6)
        ]
        + [identical_after_truncation_row()],
    )
    helpful.write_bytes("\ufeff".encode() + helpful.read_bytes())  # saved by a Windows tool
    pku = shared_data / "pku_saferlhf" / "pku_saferlhf_alpaca7b_test_sample.jsonl"
    return safety, pku, helpful


def make_config(tmp_path, model_dir, safety, pku, helpful, **extra):
    overrides = [
        f"data.sources=[{{path: '{safety}'}}, {{path: '{pku}', preference: safety}}]",
        f"data.helpfulness_sources=[{{path: '{helpful}'}}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"model.name_or_path={model_dir}",
        "data.max_length=96",
        "data.max_prompt_length=48",
        "data.eval_fraction=0.2",
        "data.max_invalid_fraction=0.1",
        "data.tokenize_concurrency=1",
        "data.ref_batch_size=16",
        "loss.name=safedpo",
        *[f"{k}={v}" for k, v in extra.items()],
    ]
    return load_config(None, overrides)


@pytest.mark.slow
def test_pipeline_end_to_end_scores_once_and_reuses_the_cache(
    ray_local, tiny_model_dir, sources, tmp_path
):
    safety, pku, helpful = sources
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "ref-model")
    cfg = make_config(tmp_path, model_dir, safety, pku, helpful)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = tmp_path / "out"

    first = prepare_datasets(cfg, tokenizer, output_dir=out)
    stats = first.stats
    assert stats["cache"] == "miss" and stats["ref_cache"] == "miss"
    assert stats["validation"]["rows"] == 34 + 2 + 7 and stats["validation"]["rejected"] == 3
    assert stats["validation"]["reasons"] == {
        "identical_after_truncation": 1, "identical_responses": 1, "unparseable_row": 1
    }
    assert stats["duplicates"] == 2
    assert stats["formats"] == {
        "realign_subset": "safe_unsafe_pairs",
        "pku_saferlhf_alpaca7b_test_sample": "pku_saferlhf",
        "uf": "ultrafeedback_binarized",
    }
    counts = stats["transform"]["safedpo"]
    assert counts["kept"] + counts["swapped"] + counts["dropped"] == 30 + 2 + 7
    rows = stats["rows"]
    assert rows["helpfulness"] == 6 and rows["train"] + rows["eval"] == 32 - counts["dropped"]
    assert rows["eval"] > 0 and rows["train"] > rows["eval"]
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert sorted((r["file"], r["row"]) for r in rejects) == [
        (str(safety), 32), (str(safety), 33), (str(helpful), 6)
    ]
    assert rejects[-1]["reason"] == "identical_after_truncation"
    assert json.loads((out / "data_summary.json").read_text())["rows"] == rows

    train_ds, eval_ds, helpful_ds = (
        d.materialize() for d in (first.train, first.eval, first.helpfulness)
    )
    train, evals = train_ds.take_all(), eval_ds.take_all()
    assert len(train) == rows["train"] and len(evals) == rows["eval"]
    assert not {r["id"] for r in train} & {r["id"] for r in evals}  # split by id hash
    assert all(r["chosen_safe"] for r in train)  # SafeDPO: the safe response is always chosen here
    row = train[0]
    assert all(
        math.isfinite(row[k]) and row[k] < 0 for k in ("ref_chosen_logps", "ref_rejected_logps")
    )

    # The cached log-probs are what the reference model gives.
    from rayalign.logprobs import sequence_logps
    from rayalign.modeling.models import load_model

    model = load_model(ModelConfig(name_or_path=str(model_dir))).eval()
    ids = torch.tensor([list(row["chosen_input_ids"])])
    with torch.no_grad():
        expected = sequence_logps(
            model, ids, torch.ones_like(ids), torch.tensor([list(row["chosen_labels"])])
        )
    assert row["ref_chosen_logps"] == pytest.approx(float(expected[0]), abs=1e-3)

    # BFPO buffered mixing: equal-size steps whatever the sizes (train > helpfulness here).
    steps = list(buffered_batches(train_ds, helpful_ds, batch_size=2))
    assert len(steps) == rows["train"] // 2
    assert all(len(s["id"]) == len(h["id"]) == 2 for s, h in steps)

    # Second run: break the reference model's config so that instantiating the scoring
    # actor would fail; the cache must make that stage never run.
    (model_dir / "config.json").write_text("{broken")
    second = prepare_datasets(cfg, tokenizer, output_dir=tmp_path / "out2")
    assert second.stats["cache"] == "hit" and second.stats["ref_cache"] == "hit"
    assert second.path == first.path and second.stats["rows"] == rows
    assert sorted(r["ref_chosen_logps"] for r in second.train.take_all()) == sorted(
        r["ref_chosen_logps"] for r in train
    )
    assert pq.read_table(tmp_path / "out2" / "rejects.parquet").num_rows == 3  # the same rejects


def test_pipeline_stops_above_the_invalid_threshold(ray_local, tiny_model_dir, tmp_path):
    bad = write_jsonl(
        tmp_path / "mostly_bad.jsonl",
        [
            {
                "prompt": "Hi",
                "chosen": "Hello",
                "rejected": "Bye",
                "chosen_safe": True,
                "rejected_safe": False,
            },
            {
                "prompt": "Hi",
                "chosen": "",
                "rejected": "Bye",
                "chosen_safe": True,
                "rejected_safe": False,
            },
            {
                "prompt": "Hi",
                "chosen": "Hey",
                "rejected": "Bye",
                "chosen_safe": "unsure",
                "rejected_safe": False,
            },
        ],
    )
    cfg = load_config(
        None,
        [
            f"data.sources=[{{path: '{bad}'}}]",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.precompute_ref_logps=false",
            "data.max_invalid_fraction=0.5",
        ],
    )
    with pytest.raises(UserError) as info:
        prepare_datasets(
            cfg, AutoTokenizer.from_pretrained(tiny_model_dir), output_dir=tmp_path / "out"
        )
    message = str(info.value)
    assert str(bad) in message and "row 1" in message and "field 'chosen'" in message
    assert pq.read_table(tmp_path / "out" / "rejects.parquet").num_rows == 2


def test_prepared_pairs_keep_the_source_order(ray_local, tiny_model_dir, tmp_path):
    """Training reads the cache in its files' order, so with ``data.shuffle`` off the files
    must hold the rows in the sources' order: before, two cold builds of the demo pairs
    wrote their blocks in either order, and the same settings trained on other pairs from
    step 1."""
    from rayalign.data.pipeline import _rows_in_order
    from rayalign.demo_data import load_demo_pairs

    cfg = load_config(None, ["data.sources=[{path: 'builtin:demo'}]", f"data.cache_dir={tmp_path / 'cache'}",
                             "data.precompute_ref_logps=false", "data.eval_fraction=0.0", "data.shuffle=false"])
    assert prepare_datasets(cfg, AutoTokenizer.from_pretrained(tiny_model_dir)).stats["cache"] == "miss"
    source = [row["prompt"] for row in load_demo_pairs()]
    parts = sorted((tmp_path / "cache" / "prepared").glob("*/pairs/*.parquet"))
    assert len(parts) >= 2  # more than one block, or the order could not go wrong
    assert [p for part in parts for p in pq.read_table(part, columns=["prompt"])["prompt"].to_pylist()] == source
    # The stream as Ray Train reads it (preserve_order; a dataset keeps the context it was
    # made in, so the cache is opened again under it).
    with _rows_in_order():
        again = prepare_datasets(cfg, AutoTokenizer.from_pretrained(tiny_model_dir))
        assert again.stats["cache"] == "hit"
        assert [row["prompt"] for row in again.train.iter_rows()] == source


def test_shuffled_pairs_follow_the_seed_not_the_path(ray_local, tiny_model_dir, tmp_path):
    """``data.shuffle`` (the default): the cache holds a permutation of the rows seeded by
    ``data.seed``, the same wherever the file is stored, another one for another seed."""
    from rayalign.data.pipeline import _rows_in_order
    from rayalign.demo_data import load_demo_pairs

    rows = load_demo_pairs()[:300]
    source = [row["prompt"] for row in rows]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def order(folder, seed=0):
        (tmp_path / folder).mkdir(exist_ok=True)
        path = write_jsonl(tmp_path / folder / "pairs.jsonl", rows)
        cfg = load_config(None, [f"data.sources=[{{path: '{path}'}}]", f"data.cache_dir={tmp_path / folder / 'cache'}",
                                 "data.precompute_ref_logps=false", "data.eval_fraction=0.0", f"data.seed={seed}"])
        with _rows_in_order():  # as Ray Train reads it
            return [row["prompt"] for row in prepare_datasets(cfg, tokenizer).train.iter_rows()]

    first = order("a")
    assert sorted(first) == sorted(source) and first != source
    # Not a block-wise rotation: the first half holds rows from both halves of the file.
    head = {source.index(p) for p in first[:150]}
    assert min(head) < 100 and max(head) >= 200
    assert order("b") == first  # another folder: same order
    assert order("a", seed=1) != first  # data.seed reaches the order (and the cache key)


def test_shuffle_keys_are_seeded_and_stable():
    from rayalign.data.pipeline import shuffle_keys

    where = [f"0\x1f0\x1f{r}\x1fid{r}" for r in range(50)]
    keys = shuffle_keys(where, seed=0)
    assert keys.shape == (50,) and keys.dtype == np.uint64 and len(set(keys.tolist())) == 50
    assert (shuffle_keys(where, seed=0) == keys).all()
    assert (shuffle_keys(where, seed=1) != keys).any()
    assert sorted(range(50), key=keys.__getitem__) != list(range(50))
    # Pinned: a prepared cache's order must not change between versions of rayalign. The
    # keys were floats in [0, 1) before; the whole hashes put the rows in the same order.
    pinned = shuffle_keys(["0\x1f0\x1f1\x1fa", "0\x1f0\x1f2\x1fb", "1\x1f3\x1f7\x1fc"], seed=0)
    assert pinned.tolist() == [15331521846334853141, 3712572453118136822, 5971290818394907610]
    assert (pinned / 2.0**64).tolist() == pytest.approx(  # the float keys caches had before
        [0.831123464665261, 0.20125895595902613, 0.32370432389232523], abs=1e-12)
