"""The gateway's users file: who a bearer token belongs to.

The file holds no token, only each token's SHA-256 (a token is 32 random bytes, so an unsalted hash cannot
be reversed by guessing), so a copy of the file lets no one in. It is created owner-only (0600), and
re-read when it changes, so tokens issued or revoked while the gateway runs count at once.

    {"version": 1, "tokens": [{"user": "alice", "sha256": "<hex>", "issued": 1764650000.0}, ...]}
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from pathlib import Path

# A user name is also the owner recorded with each job. No "@": jobs submitted from Python carry owners
# "user@host", so no gateway user can claim them in the archive.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_user_name(name: str) -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise ValueError(f"user name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                         f"letter or digit")
    return name


class UsersFile:
    """Token -> user, from `path`; thread-safe; reloaded when the file's mtime or size changes."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp = None
        self._entries: list[tuple[str, str]] = []  # (sha256 hex, user)

    # -- reading -----------------------------------------------------------------------------------
    def _load(self) -> list[dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(self.path, 0o600)  # ours but open to others: keep it private
        elif st.st_uid not in (os.getuid(), 0) or stat.S_IMODE(st.st_mode) & 0o022:
            raise ValueError(f"{self.path} is another user's or writable by others: anyone could add a token "
                             f"to it; use a users file of your own (created owner-only)")
        try:
            data = json.loads(self.path.read_text())
            tokens = data["tokens"]
            if not isinstance(tokens, list) or not all(isinstance(t, dict) and isinstance(t.get("user"), str)
                                                       and isinstance(t.get("sha256"), str) for t in tokens):
                raise ValueError("'tokens' must be a list of {\"user\": ..., \"sha256\": ...}")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path} is not a dynexec gateway users file: {e}") from None
        return tokens

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._entries = [(t["sha256"], t["user"]) for t in self._load()]
            self._stamp = stamp

    def user_of(self, token: str | None) -> str | None:
        """The user holding `token`, or None. Compares every entry in constant time (hmac.compare_digest)."""
        if not token:
            return None
        digest = _digest(token)
        with self._lock:
            try:
                self._refresh()
            except ValueError:
                pass  # a half-written edit by hand: keep the last good list
            found = None
            for known, user in self._entries:
                if hmac.compare_digest(known, digest) and found is None:
                    found = user
            return found

    def users(self) -> list[str]:
        with self._lock:
            self._refresh()
            return sorted({u for _, u in self._entries})

    # -- writing -----------------------------------------------------------------------------------
    def _save(self, tokens: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".dynexec-users-")  # created 0600
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "tokens": tokens}, f, indent=2)
        os.replace(tmp, self.path)

    def create(self) -> None:
        """An empty users file (owner-only), if there is none."""
        with self._lock:
            if not self.path.exists():
                self._save([])

    def issue(self, user: str) -> str:
        """A new token for `user` (added to the file; the user's other tokens stay valid). Returned once:
        only its hash is kept."""
        check_user_name(user)
        token = secrets.token_urlsafe(32)
        with self._lock:
            tokens = self._load()
            tokens.append({"user": user, "sha256": _digest(token), "issued": time.time()})
            self._save(tokens)
        return token

    def revoke(self, user: str) -> int:
        """Removes every token of `user`; returns how many."""
        with self._lock:
            tokens = self._load()
            kept = [t for t in tokens if t["user"] != user]
            self._save(kept)
        return len(tokens) - len(kept)
