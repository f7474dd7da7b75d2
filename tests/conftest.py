"""Shared fixtures: one local Ray for the whole session, tiny offline models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the Hub; make any accidental attempt fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Beside the repository by default; RAYALIGN_SHARED_DATA points elsewhere (e.g. a scratch clone).
SHARED_DATA = Path(os.environ.get("RAYALIGN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The third-party reference data beside the repository (read-only, never copied)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"reference data not found at {SHARED_DATA}; set RAYALIGN_SHARED_DATA or see ../shared/data/README.md")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """Start one fresh local Ray (never attach to another process's cluster) for the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=4,
            # Train V2's placement-group watcher needs the State API the dashboard serves.
            include_dashboard=True,
            log_to_driver=True,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + chatml tokenizer saved as safetensors (built offline)."""
    from rayalign.modeling.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-chatml"), chat_template="chatml")


@pytest.fixture(scope="session")
def tiny_llama3_model_dir(tmp_path_factory) -> Path:
    """Like ``tiny_model_dir`` but with a Llama-3-style template whose tokenizer adds BOS."""
    from rayalign.modeling.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama3"), chat_template="llama3")
