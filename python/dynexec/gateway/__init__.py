"""dynexec's browser gateway: an HTTP server (aiohttp) in front of a cluster, for people and programs that
do not write Python, as the original design's execution server served browsers.

    python -m dynexec.gateway --users users.json --add-user alice       # prints alice's token, once
    python -m dynexec.gateway --connect cluster.json --users users.json  # http://127.0.0.1:8470/

A JSON API under /api/ (every request with `Authorization: Bearer TOKEN`), and a status page at /.
aiohttp, because it is one Debian package (python3-aiohttp) that is server and client at once, asyncio
native (a slow cluster call waits in a thread while the page's many small polls are served), and well kept;
FastAPI would need uvicorn, starlette and pydantic for the same, cpp-httplib a C++ build for what is glue.
result_url() and the users file need no aiohttp; the server (make_app, serve, Gateway) is imported on use.
"""
from .cli import main
from .urls import base_url, gateway_file_for, page_url, result_url
from .users import UsersFile

__all__ = ["Gateway", "UsersFile", "base_url", "gateway_file_for", "main", "make_app", "page_url", "result_url",
           "serve"]


def __getattr__(name):
    if name in ("Gateway", "make_app", "serve"):
        from . import server
        return getattr(server, name)
    raise AttributeError(f"module 'dynexec.gateway' has no attribute {name!r}")
