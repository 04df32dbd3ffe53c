"""``POST /v1/feedback``: a score for a request this gateway answered, appended to the feedback
log (``herd serve --feedback-log FILE``), which `herd import choice-log` joins with the choice
log on the request id.

Which requests were answered (status 200) is remembered in the gateway's state for
``gateway.feedback_window_days``: with Redis (``HERD_STATE_URL``) every worker and replica
knows every id; in one process's memory, only that process does, so `herd serve` refuses
``--workers N`` with the feedback log and no shared state. At most one feedback per request:
the claim is atomic in the state, then the line is written.

Statuses: 400 a body that is not a JSON object, 422 a field that is missing, of the wrong type
or out of range (and unknown fields), 404 a request id not answered here or older than the
window, 409 a second feedback for one request, 503 the shared state unreachable (an id herd
cannot check is never called unknown)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from herd.gateway import telemetry as tm
from herd.gateway.appendlog import AppendLog
from herd.gateway.errors import GatewayError
from herd.gateway.state import State, StateDown

ENV_FEEDBACK_LOG = "HERD_FEEDBACK_LOG"
MAX_LABEL, MAX_COMMENT, MAX_ID = 64, 2000, 128
FIELDS = ("request_id", "score", "label", "comment")


def parse_feedback(raw: bytes) -> dict:
    """The feedback in ``raw``, every field checked: ``request_id`` and ``score`` (0 to 1)
    required, ``label`` and ``comment`` optional strings."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise GatewayError(400, "the body is not valid JSON; send {\"request_id\": ..., \"score\": 0..1}",
                           code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "the body must be a JSON object such as {\"request_id\": \"...\", \"score\": 1}",
                           code="invalid_body")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise GatewayError(422, f"unknown field(s) {unknown}; feedback takes {list(FIELDS)}", param=unknown[0],
                           code="invalid_field")
    rid = body.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID:
        raise GatewayError(422, "'request_id' is required: the x-herd-request-id header (or herd.request_id in the "
                                f"body) of the answer, a string of at most {MAX_ID} characters", param="request_id",
                           code="invalid_field")
    score = body.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) or not 0 <= score <= 1:
        raise GatewayError(422, f"'score' must be a number from 0 (wrong) to 1 (right); got {json.dumps(score)}",
                           param="score", code="invalid_field")
    for name, limit in (("label", MAX_LABEL), ("comment", MAX_COMMENT)):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise GatewayError(422, f"'{name}' must be a string", param=name, code="invalid_field")
        if value is not None and len(value) > limit:
            raise GatewayError(422, f"'{name}' is {len(value)} characters; at most {limit}", param=name,
                               code="invalid_field")
    return {"request_id": rid, "score": float(score), "label": body.get("label"), "comment": body.get("comment")}


class Feedback:
    def __init__(self, path: str | Path, state: State, window_days: float):
        self.log = AppendLog(path)
        self.state = state
        self.window_s = window_days * 86400

    async def answered(self, request_id: str) -> None:
        """Remember a request answered with status 200, for the window."""
        await self.state.remember_answered(request_id, self.window_s)

    async def submit(self, raw: bytes, key: str) -> dict:
        """Check, claim and log one feedback; what the client is told back."""
        try:
            fb = parse_feedback(raw)
        except GatewayError:
            tm.labelled(tm.FEEDBACK, key, "invalid").inc()
            raise
        rid = fb["request_id"]
        try:
            claim = await self.state.claim_feedback(rid)
        except StateDown:
            raise GatewayError(503, "the state store that knows the answered requests is unreachable; try again "
                                    "shortly", code="state_unavailable", headers={"retry-after": "1"}) from None
        if claim != "ok":
            tm.labelled(tm.FEEDBACK, key, claim).inc()
            if claim == "repeat":
                raise GatewayError(409, f"request {rid} already has feedback; one per request", param="request_id",
                                   code="feedback_exists")
            days = self.window_s / 86400
            window = f"{days:g} day(s)" if days >= 1 else f"{self.window_s:g} s"
            raise GatewayError(404, f"request {rid} is not one this gateway answered in the last {window}; "
                                    "send the x-herd-request-id of an answer with status 200", param="request_id",
                               code="request_not_found")
        try:
            self.log.append({"time": round(time.time(), 3), **fb, "key": key})
        except OSError as e:
            await self.state.release_feedback(rid)  # not written: the client may send it again
            raise GatewayError(503, f"the feedback log could not be written ({e.strerror or type(e).__name__}); try "
                                    "again", code="feedback_log_unwritable") from None
        tm.labelled(tm.FEEDBACK, key, "accepted").inc()
        return {"object": "feedback", "request_id": rid, "score": fb["score"], "label": fb["label"]}

    def close(self) -> None:
        self.log.close()
