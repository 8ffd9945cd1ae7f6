"""The one JSON shape of every error on the wire.

Every error response, whatever raised it, is
``{"error": "<code>", "detail": "<human text>", "field": "<path or null>"}``.
Services raise the domain errors of ``postbell.app.core.errors``; Litestar's own
exceptions (routing, validation, body size) and database outages are mapped here
too, and anything else becomes a 500 that logs the traceback and tells the client
nothing internal.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from postbell.app.core.errors import PostbellError

log = structlog.get_logger("postbell.api")


class ErrorBody(msgspec.Struct):
    error: str
    detail: str
    field: str | None = None


_FIELD_NAMED_RE = re.compile(r"field `([^`]+)`")
_LITESTAR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error_response(status: int, code: str, detail: str, field: str | None = None) -> Response[Any]:
    return Response(
        ErrorBody(error=code, detail=detail, field=field),
        status_code=status,
        media_type="application/json",
    )


def _postbell_error(_: Request[Any, Any, Any], exc: PostbellError) -> Response[Any]:
    return error_response(exc.status_code, exc.code, exc.detail, exc.field)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    problems = exc.extra if isinstance(exc.extra, list) else []
    if not problems:
        # Litestar raises this for bodies msgspec could not parse as JSON at all.
        return error_response(
            400, "malformed_json", f"the request body is not valid JSON: {exc.detail}"
        )
    first = problems[0] if isinstance(problems[0], dict) else {}
    message = str(first.get("message", exc.detail))
    key = first.get("key")
    field = None if key in (None, "data", "") else str(key)
    if field is None:
        named = _FIELD_NAMED_RE.search(message)
        field = named.group(1) if named else None
    source = first.get("source")
    if source == "body" and message == "'data'":  # Litestar's wording for "no body at all"
        return error_response(400, "missing_body", "the request needs a JSON body")
    if source in ("query", "path", "header"):
        return error_response(400, "invalid_parameter", message, field)
    return error_response(422, "validation_error", message, field)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return _internal_error(request, exc)
    detail = str(exc.detail)
    if status == 400 and ("JSON" in detail or "truncated" in detail or "malformed" in detail):
        return error_response(
            400, "malformed_json", f"the request body is not valid JSON: {detail}"
        )
    if status == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}"
    if status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    if status == 413:
        detail = "the request body is larger than the service accepts"
    return error_response(status, _LITESTAR_CODES.get(status, "http_error"), detail)


def _database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
    response = error_response(
        503, "database_unavailable", "the database is unreachable; retry shortly"
    )
    response.headers["Retry-After"] = "2"
    return response


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled_error", path=request.url.path, method=request.method, exc_info=exc)
    return error_response(
        HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred"
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    PostbellError: _postbell_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    psycopg.OperationalError: _database_unavailable,
    psycopg_pool.PoolTimeout: _database_unavailable,
    Exception: _internal_error,
}
