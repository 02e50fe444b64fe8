"""The Hugging Face hub as headstart meets it: whether it can be reached now (found in seconds, not after the hub
client's minute of retries), its client held offline for a call, and the timm names nearest a misspelt one.

Example:
    >>> hub_unreachable()            # on a machine without a network
    'huggingface.co cannot be reached (Name or service not known)'
    >>> nearest_backbones("resnet5O")[:2]
    ['resnet50', 'resnet51q']
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

__all__ = ["hub_offline", "hub_unreachable", "nearest_backbones"]


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached now, found within ``timeout`` seconds; None when it can (or when
    it is not ours to tell: offline mode already set, or a proxy in between). Without this, a machine with no network
    spends about a minute in the hub client's retries before the same answer."""
    if os.environ.get("HF_HUB_OFFLINE") or any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or type(exc).__name__})"
    return None


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """The hub client in offline mode for the duration (local cache only), when ``offline``."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def nearest_backbones(name: str, n: int = 5, *, first: Sequence[str] = ()) -> list[str]:
    """The timm names closest in spelling to ``name`` (``first`` first among equals), for an error that
    suggests what was meant: ``resnet5O`` → ``resnet50``, ``efficientnet_lite9`` → ``efficientnet_lite0``…

    Example:
        >>> nearest_backbones("resnet5O")[0]
        'resnet50'
    """
    import difflib

    import timm

    arch, _, tag = name.partition(".")
    pool = list(dict.fromkeys([*first, *timm.list_models()]))
    by_lower = {p.lower(): p for p in pool}
    found = [by_lower[m] for m in difflib.get_close_matches(arch.lower(), list(by_lower), n=n, cutoff=0.6)]
    if tag and found:  # a pretrained tag given: the tagged names of the nearest architecture
        tagged = timm.list_models(f"{found[0]}.*", pretrained=True)
        found = difflib.get_close_matches(name, tagged, n=n, cutoff=0.0) or found
    return found
