"""Is the network usable? Decided the way huggingface_hub decides it, so mirrors and proxies work.

- ``HF_HUB_OFFLINE`` (1/ON/YES/TRUE) means offline at once: no request is made.
- ``HF_ENDPOINT`` names a Hub mirror; reachability is asked of it, not of a fixed host.
- Requests go through huggingface_hub's HTTP session, which honours ``HTTP(S)_PROXY`` / ``NO_PROXY``.
- wandb: ``WANDB_BASE_URL`` (a self-hosted server) or api.wandb.ai; unreachable means offline logging.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

WANDB_DEFAULT_URL = "https://api.wandb.ai"


_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_mode() -> bool:
    """HF_HUB_OFFLINE, read as huggingface_hub reads it (1/ON/YES/TRUE, any case), at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def hub_endpoint() -> str:
    """The Hugging Face endpoint in use: HF_ENDPOINT (a mirror) or huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def url_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when an HTTP(S) request to ``url`` gets any answer within ``timeout`` seconds, through huggingface_hub's
    HTTP session — which honours HTTP(S)_PROXY/NO_PROXY like every download does. No raw socket to a fixed host."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(url, timeout=timeout, follow_redirects=False)
        return True
    except Exception:  # connection refused, DNS failure, timeout, proxy refusing: not reachable
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (or the HF_ENDPOINT mirror) can be used now; offline mode answers at once."""
    return not offline_mode() and url_reachable(hub_endpoint(), timeout)


def wandb_offline_if_unreachable(where: str = "") -> bool:
    """Set WANDB_MODE=offline when the user left it unset and the wandb server cannot be reached; returns whether
    it did. wandb then logs to disk and ``wandb sync`` uploads later."""
    if "WANDB_MODE" in os.environ:
        return False
    url = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)
    if url_reachable(url):
        return False
    os.environ["WANDB_MODE"] = "offline"
    logger.info("wandb: %s unreachable, logging offline%s (wandb sync later)", url, f" to {where}" if where else "")
    return True
