"""The moved modules (issue 14 item 8) keep their old import paths as aliases of one module."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MOVED = {
    "rayalign.plan": "rayalign.jobs.plan",
    "rayalign.archs": "rayalign.jobs.archs",
    "rayalign.rowcounts": "rayalign.jobs.rowcounts",
    "rayalign.jobspec": "rayalign.jobs.jobspec",
    "rayalign.jobclient": "rayalign.jobs.jobclient",
    "rayalign.stages": "rayalign.jobs.stages",
    "rayalign.models": "rayalign.modeling.models",
    "rayalign.hub": "rayalign.modeling.hub",
}


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_path_is_the_moved_module(old, new):
    moved = importlib.import_module(new)
    assert importlib.import_module(old) is moved
    assert sys.modules[old] is moved
    package, _, name = old.rpartition(".")
    assert getattr(importlib.import_module(package), name) is moved


def test_from_import_and_patch_through_old_path(monkeypatch):
    import rayalign.jobs.plan
    from rayalign import plan
    from rayalign.plan import plan_spec

    assert plan is rayalign.jobs.plan
    assert plan_spec is rayalign.jobs.plan.plan_spec
    monkeypatch.setattr("rayalign.plan.plan_spec", "patched")
    assert rayalign.jobs.plan.plan_spec == "patched"


def test_old_path_first_in_a_fresh_interpreter():
    # Importing through the alias before the new path gives one module object too.
    code = (
        "import rayalign.models, rayalign.plan, rayalign.modeling.models, rayalign.jobs.plan, sys\n"
        "assert rayalign.models is rayalign.modeling.models\n"
        "assert rayalign.plan is rayalign.jobs.plan\n"
        "assert sys.modules['rayalign.plan'] is sys.modules['rayalign.jobs.plan']\n"
        "assert 'torch' not in sys.modules\n"
    )
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)
