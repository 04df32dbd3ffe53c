"""The per-turn choice log: one JSON line per answered request, so a team can join herd's
choices with what its users did next (the A/B test behind a blend's engagement figures).

A session is logged as a keyed hash (HMAC-SHA256), never as text: without an explicit session
the key is the conversation's first user message, and a log must not become a copy of users'
prompts. The secret comes from ``HERD_SESSION_SECRET`` or the pool file's
``gateway.session_secret``; without either, ``herd serve`` draws a random one at start (shared by
its workers), so hashes join within one run but not across restarts. Clients that want to join
on their own ids compute ``HMAC(secret, session)`` with the same secret.

The text the router scored is logged as ``query`` only when asked (``herd serve --log-prompts``
or the pool file's ``gateway.log_prompts``), and never for a private request: it is what lets
the log train a router on its own traffic."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from herd.gateway.appendlog import AppendLog

ENV_CHOICE_LOG = "HERD_CHOICE_LOG"
ENV_SESSION_SECRET = "HERD_SESSION_SECRET"


def session_secret(configured: str | None = None) -> str:
    """The secret sessions are hashed with: the environment's, the pool file's, or a new random one
    (put in the environment, so worker processes started after this share it)."""
    return (os.environ.get(ENV_SESSION_SECRET) or configured
            or os.environ.setdefault(ENV_SESSION_SECRET, secrets.token_hex(32)))


class ChoiceLog(AppendLog):
    """The choice log: one record per request, with the session as a keyed hash."""

    def __init__(self, path: str | Path, secret: str, session_text: bool = False, prompts: bool = False):
        super().__init__(path)
        self._key = secret.encode()
        self.session_text = session_text  # the pool's gateway.log_session_text: the clear session too
        self.prompts = prompts  # --log-prompts or gateway.log_prompts: the text the router scored too

    def session_id(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()[:32]

    def write(self, record: dict, session: str, private: bool, query: str | None = None) -> None:
        """``record`` with the session's hash; the session's text and the ``query`` only when
        asked and the request is not private."""
        record = {**record, "session": self.session_id(session)}
        if self.session_text and not private:
            record["session_text"] = session
        if self.prompts and not private and query is not None:
            record["query"] = query
        self.append(record)
