"""``herd serve --log-format json``: every log line one JSON object, for log shippers. uvicorn's
and herd's own lines, an access line per request and a decision line per answered chat request,
the last two with the request id. Never prompt text: paths without query strings, decisions
without sessions.

It lives outside ``herd.gateway`` for the reason ``herd.http_guard`` does: worker processes load
their logging configuration before they answer the supervisor, and the gateway's imports are slow."""

from __future__ import annotations

import json
import logging
import time

ENV_LOG_FORMAT = "HERD_LOG_FORMAT"
access_log = logging.getLogger("herd.access")
decision_log = logging.getLogger("herd.decision")


class JsonFormatter(logging.Formatter):
    """A record as ``{"time", "level", "logger", ...}``: a record's ``fields`` as they are, any
    other record's text as ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in line})
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class AccessLog:
    """ASGI middleware writing one access line per request once its response has ended (a
    stream at its last byte): method, path, status, time, client and herd's request id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        seen = {"status": None, "request_id": None}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["request_id"] = next((v.decode("latin-1") for k, v in message.get("headers", ())
                                           if k == b"x-herd-request-id"), None)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            access_log.info("access", extra={"fields": {
                "request_id": seen["request_id"], "method": scope["method"], "path": scope["path"],
                "status": seen["status"], "ms": round((time.perf_counter() - started) * 1000, 1),
                "client": client[0] if client else None}})


def json_log_config(base: dict, level: str) -> dict:
    """uvicorn's logging configuration ``base`` with every handler writing JSON, and herd's
    access and decision lines beside uvicorn's."""
    config = {**base, "formatters": {"json": {"()": "herd.json_logs.JsonFormatter"}}}
    config["handlers"] = {name: {**handler, "formatter": "json"} for name, handler in base["handlers"].items()}
    config["loggers"] = {**base["loggers"], "herd": {"handlers": ["default"], "level": level.upper(), "propagate": False},
                         "herd.access": {"handlers": ["access"], "level": level.upper(), "propagate": False}}
    return config
