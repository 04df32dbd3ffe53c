"""Errors in OpenAI's shape, so every client's error handling works: ``{"error": {"message",
"type", "param", "code"}}`` with the matching HTTP status."""

from __future__ import annotations

import json
import re

from starlette.responses import Response

# What looks like a credential in a backend's error message: an Authorization value, an sk- key.
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]+|\bsk-[\w-]{6,}")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 502: "api_error", 503: "service_unavailable", 504: "timeout_error"}


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers or {}

    def response(self) -> Response:
        return error_response(self.status, self.message, param=self.param, code=self.code, headers=self.headers,
                              type_=self.type)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None,
               type_: str | None = None) -> dict:
    """``type_`` overrides the status's usual type, e.g. OpenAI's 429 ``insufficient_quota``."""
    default = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": type_ or default, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict | None = None, type_: str | None = None) -> Response:
    return Response(json.dumps(error_body(status, message, param=param, code=code, type_=type_)), status_code=status,
                    media_type="application/json", headers=headers)


def relayed_error(status: int, body: bytes, secrets: list[str]) -> bytes:
    """A backend's refusal as the client sees it: the status and the backend's error message (or
    the start of its body), in OpenAI's shape. Nothing else of the body is relayed, and anything
    that looks like a credential, herd's own backend keys first, is redacted: a backend that
    echoes the request's headers would otherwise show the client herd's key."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message, param, code = error["message"], error.get("param"), error.get("code")
    else:
        message, param, code = f"backend refused the request: {body.decode('utf-8', 'replace')[:500]}", None, None
    for secret in secrets:
        message = message.replace(secret, "[redacted]")
    message = _CREDENTIAL.sub("[redacted]", message)
    return json.dumps(error_body(status, message, param=_clean(param), code=_clean(code))).encode()


def _clean(value):
    return value if isinstance(value, str) and not _CREDENTIAL.search(value) else None
