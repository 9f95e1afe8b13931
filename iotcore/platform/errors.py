"""Domain errors. Services raise them; one middleware turns them into the API's error envelope."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with a place in the v1 contract: HTTP status, stable code, human message."""

    status = 500
    code = "internal_error"
    message = "Internal error."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.details = details or []
        self.headers = headers or {}
        super().__init__(self.message)


class MalformedJson(ApiError):
    status, code, message = 400, "malformed_json", "The request body is not valid JSON."


class MalformedRequest(ApiError):
    status, code, message = 400, "malformed_request", "The request is not valid HTTP."


class Unauthenticated(ApiError):
    status, code, message = 401, "unauthenticated", "Authentication is required."


class Forbidden(ApiError):
    status, code, message = 403, "forbidden", "You are not allowed to do this."


class NotFound(ApiError):
    status, code, message = 404, "not_found", "No such resource."


class MethodNotAllowed(ApiError):
    status, code, message = 405, "method_not_allowed", "This method is not allowed here."


class Conflict(ApiError):
    status, code, message = 409, "conflict", "The resource is in a conflicting state."


class PayloadTooLarge(ApiError):
    status, code, message = 413, "payload_too_large", "The request body is too large."


class UnsupportedMediaType(ApiError):
    status, code, message = 415, "unsupported_media_type", "Send application/json."


MAX_DETAILS = 20


class ValidationFailed(ApiError):
    status, code, message = 422, "validation_error", "The request is not valid."

    def __init__(self, message: str | None = None, *, details: list[dict[str, Any]]) -> None:
        # At most MAX_DETAILS entries, then one counting the rest: 60,000 unknown keys must
        # not become a 60,000-entry answer.
        if len(details) > MAX_DETAILS:
            more = len(details) - MAX_DETAILS
            details = [
                *details[:MAX_DETAILS],
                {"field": "*", "problem": f"{more} more problems not shown"},
            ]
        super().__init__(message, details=details)

    @classmethod
    def field(cls, field: str, problem: str) -> ValidationFailed:
        return cls(details=[{"field": field, "problem": problem}])


class StorageRefused(ApiError):
    """The database refused the readings for a reason a retry will not fix (a constraint, a
    permission): they are recorded as rejected (`storage_refused`), and not worth resending."""

    status, code = 422, "storage_refused"
    message = "The database refused these readings; they were recorded as rejected."

    def __init__(self, sqlstate: str) -> None:
        super().__init__(details=[{"field": "body", "problem": f"SQLSTATE {sqlstate}"}])


class RateLimited(ApiError):
    status, code, message = 429, "rate_limited", "Too many requests; retry later."

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class Unavailable(ApiError):
    status, code, message = 503, "unavailable", "A dependency is unavailable; retry later."

    def __init__(
        self, message: str | None = None, *, code: str | None = None, retry_after_s: int = 5
    ) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class Overloaded(Unavailable):
    code = "overloaded"
    message = "The server is overloaded; retry later."
