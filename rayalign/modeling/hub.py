"""Hugging Face Hub reachability: fail in a second with a plain message, not after minutes of retries."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from rayalign.errors import UserError


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection (``HF_HUB_OFFLINE=1`` means no)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise a :class:`UserError` naming ``what`` when the Hub cannot be reached."""
    if not hub_reachable():
        raise UserError(
            f"{what} is not a local path, and the Hugging Face Hub cannot be reached from this "
            "machine (offline, or HF_HUB_OFFLINE=1). Download it elsewhere and pass the local path."
        )
