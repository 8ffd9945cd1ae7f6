"""The one JSON shape of every error on the wire.

Every error response, whatever raised it, is
``{"error": "<code>", "detail": "<human text>", "field": "<path or null>"}``.
Services raise the domain errors of ``postbell.app.core.errors``; Litestar's own
exceptions (routing, validation, body size) and database outages are mapped here
too, and anything else becomes a 500 that logs the traceback and tells the client
nothing internal.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec
import psycopg
import psycopg_pool
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from postbell.app.api.types import KEY_PATTERN, LINE_PATTERN, TEXT_PATTERN
from postbell.app.core.channels import CHANNELS, parse_channel
from postbell.app.core.errors import PostbellError, TooManyRequests

log = structlog.get_logger("postbell.api")


class ErrorBody(msgspec.Struct):
    error: str
    detail: str
    field: str | None = None


_FIELD_NAMED_RE = re.compile(r"field `([^`]+)`")
#: The code of each status Litestar itself may answer (all of them in CODES).
_LITESTAR_CODES = {
    400: "invalid_parameter",
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
    missing = _MISSING_RE.search(str(exc.detail))
    if missing:
        name = missing.group(1)
        return error_response(400, "invalid_parameter", f"{name}: required", name)
    if not problems:
        # Litestar raises this for bodies msgspec could not parse as JSON at all.
        return error_response(
            400, "malformed_json", f"the request body is not valid JSON: {exc.detail}"
        )
    first = problems[0] if isinstance(problems[0], dict) else {}
    message = str(first.get("message", exc.detail))
    key = first.get("key")
    # msgspec writes a dict's keys as "[...]" (it does not keep them): name the dict.
    field = None if key in (None, "data", "") else str(key).replace("[...]", "")
    if field is None:
        named = _FIELD_NAMED_RE.search(message)
        field = named.group(1) if named else None
    source = first.get("source")
    if source == "body" and message == "'data'":  # Litestar's wording for "no body at all"
        return error_response(400, "missing_body", "the request needs a JSON body")
    message = explain(message, field)
    if source in ("query", "path", "header"):
        return error_response(400, "invalid_parameter", message, field)
    return error_response(422, "invalid", message, field)


_MISSING_RE = re.compile(r"Missing required (?:query|path|header|cookie) parameter '([^']+)'")
_REGEX_RE = re.compile(r"Expected `str` matching regex '(.*)'")
_ENUM_RE = re.compile(r"Invalid enum value '([^']*)'")


def explain(message: str, field: str | None) -> str:
    """msgspec's wording, made to say what is wrong in the caller's terms."""
    where = f"{field}: " if field else ""
    pattern = _REGEX_RE.search(message)
    if pattern:
        found = pattern.group(1).replace("\\\\", "\\")
        if found == LINE_PATTERN:
            return f"{where}control characters (line breaks, tabs, NUL) are not allowed here"
        if found == TEXT_PATTERN:
            return f"{where}NUL and control characters other than line breaks are not allowed"
        if found == KEY_PATTERN:
            return f"{where}a key is letters, digits and . _ : - (starting with a letter or digit)"
    enum = _ENUM_RE.search(message)
    if enum and field and ("channel" in field or "fallback" in field):
        value = enum.group(1)
        guess = parse_channel(value)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        return f"{where}unknown channel {value!r}{hint}; channels are {', '.join(CHANNELS)}"
    if enum and field == "priority":
        return f"{where}unknown priority {enum.group(1)!r}; one of low, normal, high, urgent"
    return message


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
    code = _LITESTAR_CODES.get(status) or ("invalid" if status < 500 else "internal_error")
    return error_response(status, code, detail)


def _database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning("database_unavailable", path=request.url.path, error=type(exc).__name__)
    response = error_response(
        503, "database_unavailable", "the database is unreachable; retry shortly"
    )
    response.headers["Retry-After"] = "2"
    return response


def _too_many(_: Request[Any, Any, Any], exc: TooManyRequests) -> Response[Any]:
    response = error_response(429, exc.code, exc.detail, exc.field)
    response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


def _unrepresentable(request: Request[Any, Any, Any], exc: psycopg.DataError) -> Response[Any]:
    """A value that reached the database and did not fit (a bound missed at the API):
    the caller's fault, so a 422 without internals, never a 500."""
    log.warning(
        "value_refused_by_database",
        path=request.url.path,
        error=type(exc).__name__,
        sqlstate=exc.sqlstate,
    )
    return error_response(
        422, "invalid", "a value in the request is out of range or cannot be stored"
    )


def _too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    return error_response(400, "malformed_json", "the request body is nested too deeply to read")


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("unhandled_error", path=request.url.path, method=request.method, exc_info=exc)
    return error_response(
        HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "an internal error occurred"
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    TooManyRequests: _too_many,
    PostbellError: _postbell_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    psycopg.OperationalError: _database_unavailable,
    psycopg.DataError: _unrepresentable,
    RecursionError: _too_deep,
    psycopg_pool.PoolTimeout: _database_unavailable,
    Exception: _internal_error,
}
