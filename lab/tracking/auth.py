"""W&B credentials, mode resolution, server probe and secret redaction (no wandb import here).

Credentials are ``WANDB_API_KEY`` (or ``WANDB_IDENTITY_TOKEN_FILE``) or a ``wandb login`` entry in
``$NETRC`` / ``~/.netrc``, read with the standard library's :mod:`netrc`.  Every message this
package prints goes through :func:`redact`: the API key and the netrc password never reach a log.
"""
from __future__ import annotations

import netrc
import os
import re
import socket
import sys
from urllib.parse import urlsplit

__all__ = ["MODES", "resolve_mode", "server_reachable", "redact", "note", "describe", "have_credentials",
           "netrc_password", "secrets"]

MODES = ("auto", "online", "offline", "none")
DEFAULT_BASE_URL = "https://api.wandb.ai"
PREFIX = "lab: W&B"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def netrc_password(host: str | None = None) -> str | None:
    """The password of the netrc entry for the W&B host (None when there is no usable entry)."""
    host = host or urlsplit(base_url()).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):  # missing, unreadable, malformed or too permissive
        return None
    return auth[2] if auth and auth[2] else None


def secrets() -> list[str]:
    """Values that must never be printed or logged."""
    found = [os.environ.get("WANDB_API_KEY") or "", netrc_password() or ""]
    return [s for s in found if len(s) >= 8]


def redact(text: str) -> str:
    for secret in secrets():
        text = text.replace(secret, "***")
    # anything that looks like a W&B key (40+ word characters) in an error message
    return re.sub(r"\b[A-Za-z0-9_]{40,}\b", "***", text)


def note(msg: str) -> None:
    print(f"{PREFIX}: {redact(msg)}", file=sys.stderr, flush=True)


def describe(e: BaseException, limit: int = 160) -> str:
    """One short line for an exception (server errors can carry whole HTML pages)."""
    text = " ".join(re.sub(r"<[^>]+>", " ", str(e)).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__


def have_credentials() -> bool:
    """True if W&B credentials are available, without touching the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    return netrc_password() is not None


def resolve_mode(mode: str | None) -> str:
    """Map a requested mode (auto/online/offline/none, or recipe aliases) to online/offline/none."""
    m = (mode or "auto").strip().lower()
    aliases = {"disabled": "none", "off": "none", "false": "none", "no": "none", "dryrun": "offline"}
    m = aliases.get(m, m)
    if m not in MODES:
        raise ValueError(f"tracking mode must be one of {', '.join(MODES)}; got {mode!r}")
    if m != "auto":
        return m
    env_mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if env_mode == "disabled":
        return "none"
    if env_mode in ("offline", "dryrun"):
        return "offline"
    return "online" if have_credentials() else "offline"


def server_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Quick TCP probe of the W&B server (skipped when a proxy is configured)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True, ""
    parts = urlsplit(base_url())
    host = parts.hostname
    if not host:
        return False, f"WANDB_BASE_URL {base_url()!r} has no host"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as e:
        return False, f"cannot reach {parts.scheme}://{host}:{port} ({e.__class__.__name__})"
