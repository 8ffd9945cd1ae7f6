"""Domain errors, and the one vocabulary of error codes.

Services raise the errors below; ``postbell.app.api.errors`` maps them (and
Litestar's own exceptions) to the JSON error body
``{"error": <code>, "detail": <text>, "field": <path or null>}``, and the CLI prints
their ``detail`` as one line. ``CODES`` is every code either of them answers with;
docs/http-api.md lists the same table (a test holds them together).
"""

from __future__ import annotations

#: code -> (HTTP status, what it means)
CODES: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "the body is not JSON (or is nested too deeply to read)"),
    "missing_body": (400, "the endpoint needs a JSON body and got none"),
    "invalid_parameter": (
        400,
        "a path, query or header parameter is malformed or out of range; `field` names it",
    ),
    "unauthorized": (401, "no credential, an unknown one, or an expired recipient token"),
    "forbidden": (403, "the credential is valid but does not open this (or a signature failed)"),
    "not_found": (404, "no such thing, or no route for this path"),
    "method_not_allowed": (405, "the path exists but not with this method"),
    "conflict": (409, "the request contradicts the current state (nothing left to cancel ...)"),
    "body_too_large": (413, "the body is larger than the service accepts (8 MiB)"),
    "unsupported_media_type": (415, "the body is not in a format the endpoint reads"),
    "invalid": (422, "a valid JSON body breaks a rule; `field` names the first one at fault"),
    "idempotency_conflict": (422, "this Idempotency-Key was used with a different request"),
    "too_many_requests": (429, "over a rate limit; `Retry-After` says when to try again"),
    "internal_error": (500, "a bug: logged with a traceback, nothing internal in the answer"),
    "database_unavailable": (503, "the database is unreachable; retry after `Retry-After`"),
    "not_ready": (503, "/ready: the database is unreachable or migrations are pending"),
    "unavailable": (503, "something postbell depends on failed; retry shortly"),
}


class PostbellError(Exception):
    status_code = 400
    code = "invalid_parameter"

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code:
            self.code = code


class InvalidParameter(PostbellError):
    """A path, query or header parameter that is malformed or out of range (400)."""

    status_code = 400
    code = "invalid_parameter"


class Malformed(PostbellError):
    """A body that cannot be parsed at all: not JSON (or a form), or nested too deeply (400)."""

    status_code = 400
    code = "malformed_json"


class Invalid(PostbellError):
    """A well-formed request that breaks a rule (422)."""

    status_code = 422
    code = "invalid"


class NotFound(PostbellError):
    status_code = 404
    code = "not_found"


class Conflict(PostbellError):
    status_code = 409
    code = "conflict"


class Unauthorized(PostbellError):
    status_code = 401
    code = "unauthorized"


class Forbidden(PostbellError):
    status_code = 403
    code = "forbidden"


class TooManyRequests(PostbellError):
    """Over a rate limit (429); ``retry_after`` seconds until the next request may pass."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Unavailable(PostbellError):
    """Something postbell depends on failed; the caller may retry (503)."""

    status_code = 503
    code = "unavailable"
