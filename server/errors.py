"""Errors a request can meet, each mapped once to OpenAI's error JSON and an HTTP status.

    APIError                      500 internal_error (no internals in the message)
    ├── InvalidRequest            400 invalid_request_error   (param names the field)
    ├── Unauthorized              401 authentication_error
    ├── Forbidden                 403 permission_error
    ├── NotFound                  404 not_found_error         (unknown model / expert)
    ├── MethodNotAllowed          405 invalid_request_error
    ├── RequestTimeout            408 invalid_request_error   (body not sent in time)
    ├── Conflict                  409 conflict_error          (needs an engine restart)
    ├── PayloadTooLarge           413 invalid_request_error
    ├── Unprocessable             422 invalid_expert          (expert folder fails validation)
    ├── NotReady                  503 service_unavailable     (engine starting or dead)
    └── EngineFailure             500 engine_error

Body: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status = 500
    type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class InvalidRequest(APIError):
    status, type = 400, "invalid_request_error"


class Unauthorized(APIError):
    status, type = 401, "authentication_error"


class Forbidden(APIError):
    status, type = 403, "permission_error"


class NotFound(APIError):
    status, type = 404, "not_found_error"


class MethodNotAllowed(APIError):
    status, type = 405, "invalid_request_error"


class RequestTimeout(APIError):
    status, type = 408, "invalid_request_error"


class Conflict(APIError):
    status, type = 409, "conflict_error"


class PayloadTooLarge(APIError):
    status, type = 413, "invalid_request_error"


class Unprocessable(APIError):
    status, type = 422, "invalid_expert"


class NotReady(APIError):
    status, type = 503, "service_unavailable"


class EngineFailure(APIError):
    status, type = 500, "engine_error"
