"""The per-turn choice log: one JSON line per answered request, so a team can join herd's
choices with what its users did next (the A/B test behind a blend's engagement figures).

A session is logged as a keyed hash (HMAC-SHA256), never as text: without an explicit session
the key is the conversation's first user message, and a log must not become a copy of users'
prompts. The secret comes from ``HERD_SESSION_SECRET`` or the pool file's
``gateway.session_secret``; without either, ``herd serve`` draws a random one at start (shared by
its workers), so hashes join within one run but not across restarts. Clients that want to join
on their own ids compute ``HMAC(secret, session)`` with the same secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path

ENV_CHOICE_LOG = "HERD_CHOICE_LOG"
ENV_SESSION_SECRET = "HERD_SESSION_SECRET"


def session_secret(configured: str | None = None) -> str:
    """The secret sessions are hashed with: the environment's, the pool file's, or a new random one
    (put in the environment, so worker processes started after this share it)."""
    return (os.environ.get(ENV_SESSION_SECRET) or configured
            or os.environ.setdefault(ENV_SESSION_SECRET, secrets.token_hex(32)))


class ChoiceLog:
    """Appends records to a JSONL file. Each line is written whole with O_APPEND, so several
    worker processes can share one file without interleaving lines."""

    def __init__(self, path: str | Path, secret: str, session_text: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = secret.encode()
        self.session_text = session_text  # the pool's gateway.log_session_text: the clear session too
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def session_id(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()[:32]

    def write(self, record: dict, session: str, private: bool) -> None:
        """``record`` with the session's hash; its text only when the pool asks and the request
        is not private."""
        record = {**record, "session": self.session_id(session)}
        if self.session_text and not private:
            record["session_text"] = session
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)
