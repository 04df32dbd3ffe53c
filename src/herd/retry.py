"""When a failed call to one model is made again, and after how long: one rule for the gateway's
dispatch and for collection, read from the kind of failure a call ended in (``backends.Outcome``).

Both retry a transient failure (no connection, 408, 409, 429, 5xx, an unreadable answer) after a
full-jitter exponential backoff or the backend's Retry-After, whichever is longer; neither retries
a refusal of herd's credentials or model id (401, 403, 404), an error in the request itself, or
a backend that asks for a longer pause than ``max_wait_s``. They differ only where their callers
do: the gateway has a caller waiting and other models to try, collection neither.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herd.backends import Outcome
    from herd.pool import GatewaySettings, ModelConfig

MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After is a closed door, not a pause


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # calls to one model, the first included
    backoff_s: float = 0.2  # base of the jittered exponential backoff
    max_backoff_s: float = 5.0
    retried: frozenset[str] = frozenset({"transient"})  # the Outcome kinds worth the same call again
    max_wait_s: float = MAX_RETRY_AFTER_S  # a backend asking for a longer pause is not called again

    @classmethod
    def gateway(cls, model: ModelConfig, settings: GatewaySettings) -> RetryPolicy:
        """A caller waits and other models can answer: a model that timed out (it already took
        ``timeout_s``) is not asked again, nor one asking for a pause beyond ``max_backoff_s``."""
        return cls(model.retries + 1, settings.backoff_s, settings.max_backoff_s, max_wait_s=settings.max_backoff_s)

    @classmethod
    def collection(cls, retries: int, settings: GatewaySettings) -> RetryPolicy:
        """Nobody waits and no other model can answer for this one: a timeout is worth another try,
        and a Retry-After is waited out up to MAX_RETRY_AFTER_S (a call still failing is recorded
        as failed, and the next run asks it again)."""
        return cls(retries + 1, settings.backoff_s, settings.max_backoff_s, frozenset({"transient", "timeout"}))

    def pause(self, outcome: Outcome, attempt: int) -> float | None:
        """Seconds to wait before calling the model again after call ``attempt`` (0 for the first)
        ended in ``outcome``; None: not again."""
        if outcome.kind not in self.retried or attempt + 1 >= self.attempts:
            return None
        if (outcome.retry_after or 0.0) > self.max_wait_s:
            return None
        return self.delay(attempt, outcome.retry_after)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff, or the backend's Retry-After (up to ``max_wait_s``),
        whichever is longer."""
        jitter = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
        return max(jitter, min(retry_after or 0.0, self.max_wait_s))
