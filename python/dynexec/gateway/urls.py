"""Where a gateway's results are: the one function notifications and other processes call (no aiohttp needed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

_base_url: str | None = None  # the URL of the gateway running in this process, once it listens


def gateway_file_for(connection_file) -> Path:
    """Where a gateway started against `connection_file` records its URL: cluster.json -> cluster.gateway.json."""
    p = Path(connection_file)
    return p.with_name(p.stem + ".gateway.json")


def base_url(connect=None) -> str | None:
    """The gateway's base URL ("http://127.0.0.1:8470"): the one running in this process, else
    $DYNEXEC_GATEWAY_URL, else the one recorded next to the connection file `connect`; None if none."""
    if _base_url:
        return _base_url
    if os.environ.get("DYNEXEC_GATEWAY_URL"):
        return os.environ["DYNEXEC_GATEWAY_URL"].rstrip("/")
    if connect is not None:
        try:
            return json.loads(gateway_file_for(connect).read_text())["url"].rstrip("/")
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def result_url(job_id: str, base: str | None = None, connect=None) -> str | None:
    """The URL of a job's result on the gateway, {base}/jobs/{job_id}/result; None when no gateway is known.
    `base` overrides base_url(connect). GET with the owner's bearer token: the result as JSON (as
    /api/jobs/{job_id}/result); opened in a browser (no token sent): the status page showing that job."""
    base = (base or "").rstrip("/") or base_url(connect)
    return f"{base}/jobs/{job_id}/result" if base else None


def page_url(job_id: str, base: str | None = None, connect=None) -> str | None:
    """The status page showing one job (for a person: the page asks for the token once)."""
    base = (base or "").rstrip("/") or base_url(connect)
    return f"{base}/jobs/{job_id}" if base else None
