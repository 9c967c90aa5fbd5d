"""python -m dynexec.gateway: run the gateway, or issue and revoke its users' tokens."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

DEFAULT_PORT = 8470
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dynexec.gateway",
        description="An HTTP gateway to a dynexec cluster: a JSON API and a live status page, each request "
                    "authenticated with a user's bearer token.",
        epilog="Issue a token:  python -m dynexec.gateway --users users.json --add-user alice\n"
               "Run:            python -m dynexec.gateway --connect cluster.json --users users.json\n"
               "Then open http://127.0.0.1:8470/#token=TOKEN (the page keeps the token for the tab only).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connect", metavar="FILE", help="the cluster's client connection file")
    p.add_argument("--users", required=True, metavar="FILE",
                   help="the users file: each token's SHA-256 and its user (created owner-only if missing)")
    p.add_argument("--add-user", metavar="NAME", help="issue a new token for NAME, print it once, and exit")
    p.add_argument("--revoke-user", metavar="NAME", help="remove every token of NAME and exit")
    p.add_argument("--list-users", action="store_true", help="print the users that hold a token and exit")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; any other needs --public)")
    p.add_argument("--public", action="store_true",
                   help="allow --host to be an address others can reach (plain HTTP: put TLS in front)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--archive", metavar="DIR",
                   help="the cluster's results archive, for jobs older than this gateway (default: the one "
                        "named in the connection file)")
    p.add_argument("--allow-commands", action="store_true",
                   help="let users submit commands (they run as the cluster's user on its servers)")
    p.add_argument("--wait", type=float, default=0.0,
                   help="seconds to wait for the cluster's connection file to appear (default 0)")
    p.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)  # the cluster that started it
    return p


def main(argv=None) -> int:
    """The command line; returns an exit code (0 ok, 1 cannot start, 2 bad usage)."""
    from .users import UsersFile

    p = _parser()
    a = p.parse_args(argv)
    users = UsersFile(a.users)
    try:
        if a.add_user:
            token = users.issue(a.add_user)
            print(f"token for {a.add_user} (shown once; only its hash is kept in {users.path}):", file=sys.stderr)
            print(token)
            return 0
        if a.revoke_user:
            n = users.revoke(a.revoke_user)
            print(f"removed {n} token(s) of {a.revoke_user}", file=sys.stderr)
            return 0 if n else 1
        if a.list_users:
            print("\n".join(users.users()))
            return 0
        users.create()
        known = users.users()
    except (ValueError, OSError) as e:
        print(f"dynexec gateway: {e}", file=sys.stderr)
        return 1
    if not a.connect:
        p.error("--connect FILE is needed to run the gateway (or --add-user NAME to issue a token)")
    if a.host not in _LOOPBACK and not a.public:
        p.error(f"--host {a.host} is reachable from other machines: add --public to mean it")
    if not 0 <= a.port <= 65535:
        p.error("--port must be 0-65535")
    if not known:
        print(f"dynexec gateway: {users.path} has no users yet: issue a token with "
              f"`python -m dynexec.gateway --users {users.path} --add-user NAME`", file=sys.stderr, flush=True)

    from .. import connection
    from .server import Gateway, serve

    try:  # a wrong or stale file is said now, naming the file (never a secret), not at the first request
        connection.read_live(a.connect, "client", a.wait)
    except (OSError, ValueError) as e:
        print(f"dynexec gateway: {e}", file=sys.stderr)
        return 1
    gateway = Gateway(Path(a.connect), users, archive=a.archive, allow_commands=a.allow_commands, wait=a.wait)
    code = 0
    try:
        asyncio.run(serve(gateway, a.host, a.port, parent_pid=a.parent_pid or None))
    except OSError as e:  # the port is taken, the address is not ours
        print(f"dynexec gateway: cannot listen on {a.host}:{a.port}: {e}", file=sys.stderr)
        code = 1
    finally:
        gateway.close()
    # Jobs still running go on in the cluster and are archived; do not wait for them at exit (the exit hook of
    # each Executor would), and leave without tearing down engine threads (see executor._exit_now).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
