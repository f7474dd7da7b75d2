"""Unit tests of how rayalign finds the cluster and its token (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayalign.jobs.jobclient import DEFAULT_ADDRESS, ClusterError, resolve_address, resolve_token


def test_address_precedence_and_normalisation() -> None:
    assert resolve_address(None, {}) == DEFAULT_ADDRESS
    assert resolve_address("10.0.0.5:8265/", {}) == "http://10.0.0.5:8265"
    assert resolve_address(None, {"RAY_API_SERVER_ADDRESS": "http://a:1"}) == "http://a:1"
    # a GCS-style RAY_ADDRESS (what Ray sets inside jobs) is not the job API
    assert resolve_address(None, {"RAY_ADDRESS": "10.0.0.5:6379"}) == DEFAULT_ADDRESS
    assert resolve_address(None, {"RAY_ADDRESS": "https://head:8265"}) == "https://head:8265"
    with pytest.raises(ClusterError, match="not the Ray client or GCS port"):
        resolve_address("ray://head:10001", {})


def test_token_sources_in_rays_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-default-file\n")
    path_file = tmp_path / "token"
    path_file.write_text("from-path-file")

    assert resolve_token({}, home).value == "from-default-file"
    assert resolve_token({"RAY_AUTH_TOKEN_PATH": str(path_file)}, home).value == "from-path-file"
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(path_file)}
    token = resolve_token(env, home)
    assert (token.value, token.source) == ("from-env", "RAY_AUTH_TOKEN")
    assert resolve_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}, home) is None
    assert resolve_token({}, tmp_path / "empty-home") is None


def test_unreadable_token_path_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cannot read it"):
        resolve_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, tmp_path)
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ClusterError, match="empty"):
        resolve_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, tmp_path)
