"""The OpenAPI document tells the truth: every error status an operation can answer is
declared, each with the one error body (``ErrorBody``), so generated clients and
schema-driven fuzzers see what the API really does.

The rules follow from what an operation is, not from a list kept by hand: an
authenticated path answers 401/403/429; a parameter can be malformed (400); a path
with a parameter can name nothing (404); a body can be unreadable (400), too large
(413) or break a rule (422); everything can fail (500) or find the database down
(503). A handler declares what only it can answer (409 for cancel, ...) with
``responses=`` and this adds the rest.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
)

from postbell.app.core.errors import CODES

ERROR_SCHEMA = "ErrorBody"
_DESCRIPTIONS = {
    400: "Malformed body (not JSON, nested too deeply) or a bad path/query/header parameter",
    401: "No credential, an unknown one, or an expired recipient token",
    403: "The credential does not open this (a recipient token for another recipient, a send key on an admin endpoint)",  # noqa: E501
    404: "Nothing with this id or key",
    409: "The request contradicts the current state",
    413: "The body is larger than the service accepts",
    415: "The body is not JSON",
    422: "A valid JSON body that breaks a rule; `field` names it",
    429: "Over a rate limit; see Retry-After",
    500: "An internal error (logged; the answer holds nothing internal)",
    503: "The database (or a provider) is unavailable; see Retry-After",
}


def _error_response(status: int) -> OpenAPIResponse:
    codes = ", ".join(f"`{code}`" for code, (s, _) in CODES.items() if s == status)
    description = _DESCRIPTIONS.get(status, "Error")
    if codes:
        description = f"{description} (error: {codes})"
    return OpenAPIResponse(
        description=description,
        content={
            "application/json": OpenAPIMediaType(
                schema=Reference(ref=f"#/components/schemas/{ERROR_SCHEMA}")
            )
        },
    )


def _error_schema() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["error", "detail", "field"],
        properties={
            "error": Schema(type=OpenAPIType.STRING, enum=list(CODES)),
            "detail": Schema(type=OpenAPIType.STRING),
            "field": Schema(
                one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)]
            ),
        },
        description="Every error postbell answers, whatever its status.",
    )


#: Open paths that check a signature or a signed token instead of a credential.
SIGNED_PATHS = ("/api/callbacks/", "/api/unsubscribe")


def _statuses(path: str, method: str, operation: Operation, open_paths: list[str]) -> set[int]:
    statuses = {500, 503}
    is_open = any(re.match(pattern, path) for pattern in open_paths)
    if not is_open:
        statuses |= {401, 403, 429}
    if path.startswith(SIGNED_PATHS):
        statuses.add(403)
    parameters = [p for p in operation.parameters or [] if not isinstance(p, Reference)]
    if parameters:
        statuses.add(400)
    if any(p.param_in == "path" for p in parameters):
        statuses.add(404)
    if operation.request_body is not None or method in ("post", "put", "patch"):
        statuses |= {400, 413, 422}
    return statuses


def document_errors(schema: OpenAPI, open_paths: list[str]) -> None:
    """Add the error responses every operation of ``schema`` can give (in place)."""
    assert schema.components is not None
    components: dict[str, Any] = dict(schema.components.schemas or {})
    components[ERROR_SCHEMA] = _error_schema()
    schema.components.schemas = components
    for path, item in (schema.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation: Operation | None = getattr(item, method, None)
            if operation is None:
                continue
            responses = dict(operation.responses or {})
            for status in sorted(_statuses(path, method, operation, open_paths)):
                key = str(status)
                if key not in responses or _is_litestar_default(responses[key]):
                    responses[key] = _error_response(status)
            for key, response in list(responses.items()):
                if key.isdigit() and int(key) >= 400 and _is_litestar_default(response):
                    responses[key] = _error_response(int(key))
            operation.responses = responses


def _is_litestar_default(response: Any) -> bool:
    """Litestar documents 400 with its own error shape, which postbell never answers."""
    content = getattr(response, "content", None) or {}
    for media in content.values():
        ref = getattr(getattr(media, "schema", None), "ref", "") or ""
        if ref.endswith(ERROR_SCHEMA):
            return False
    return True
