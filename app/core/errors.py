"""Domain errors: what services raise, with the code and status the API answers.

They know nothing of HTTP frameworks; ``postbell.app.api.errors`` maps them (and
Litestar's own exceptions) to the one JSON error body, and the CLI prints their
``detail`` as one line.
"""

from __future__ import annotations


class PostbellError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code:
            self.code = code


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


class Unavailable(PostbellError):
    """Something postbell depends on failed; the caller may retry (503)."""

    status_code = 503
    code = "unavailable"
