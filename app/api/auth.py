"""Credentials: server API keys and recipient tokens.

``Authorization: Bearer <credential>`` on every ``/api/*`` endpoint.

* API keys (``pb_...``), role ``send`` or ``admin``. Only their SHA-256 is stored: a
  key has 256 bits of entropy, so a fast hash is safe, and it runs on every request.
  ``POSTBELL_ADMIN_KEY`` is accepted as a bootstrap admin key.
* Recipient tokens, computed by the host app without calling postbell:
  ``hex(HMAC-SHA256(secret, external_id))``, or with an expiry
  ``<unix_exp>.hex(HMAC-SHA256(secret, external_id + "." + unix_exp))``. A token opens
  only its recipient's inbox and preferences; anything else answers 403.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from postbell.app.api.limits import Limits
from postbell.app.core import db
from postbell.app.core.errors import Forbidden, Unauthorized
from postbell.app.core.keys import Role, hash_key
from postbell.app.core.tokens import check_recipient_token, looks_like_recipient_token


@dataclasses.dataclass(frozen=True, slots=True)  # pragma: no mutate (slots: memory only)
class KeyPrincipal:
    """A server-side caller holding an API key."""

    role: Role
    key_id: int | None  # None for the bootstrap POSTBELL_ADMIN_KEY

    @property
    def idempotency_scope(self) -> str:
        return "admin" if self.key_id is None else str(self.key_id)


@dataclasses.dataclass(frozen=True, slots=True)  # pragma: no mutate (slots: memory only)
class TokenPrincipal:
    """A front-end holding a recipient token; which recipient is checked per route."""

    token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsPrincipal:
    """A scraper holding POSTBELL_METRICS_TOKEN: it opens /metrics and nothing else."""


Principal = KeyPrincipal | TokenPrincipal | MetricsPrincipal


class KeyStore:
    """Resolves API keys with a short in-process cache.

    A hit skips the database for ``ttl`` seconds, so a revoked key keeps working for
    at most that long in a running process. ``last_used_at`` is written at most once
    a minute per key and process.
    """

    def __init__(self, pool: db.Pool, admin_key: str | None, *, ttl: float = 10.0) -> None:
        self._pool = pool
        self._admin_key = admin_key.encode() if admin_key else None
        self._ttl = ttl
        self._cache: dict[bytes, tuple[float, KeyPrincipal | None]] = {}
        self._touched: dict[int, float] = {}

    async def lookup(self, credential: str, *, ask_database: bool = True) -> KeyPrincipal | None:
        """The key's principal, or None. Without ``ask_database`` only the bootstrap key
        and keys this process saw lately are known (a caller over its failure limit)."""
        if self._admin_key and hmac.compare_digest(credential.encode(), self._admin_key):
            return KeyPrincipal(role="admin", key_id=None)
        digest = hash_key(credential)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            principal = cached[1]
        elif not ask_database:
            return None
        else:
            async with self._pool.connection() as conn:
                row = await db.fetch_one(conn, "api_keys_find", {"key_hash": digest})
            principal = KeyPrincipal(role=row["role"], key_id=row["id"]) if row else None
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + (self._ttl if principal else 2.0), principal)
        if principal and principal.key_id is not None:
            await self._touch(principal.key_id, now)
        return principal

    async def _touch(self, key_id: int, now: float) -> None:
        if self._touched.get(key_id, 0.0) > now - 60:
            return
        self._touched[key_id] = now
        async with self._pool.connection() as conn:
            await db.execute(conn, "api_keys_touch", {"id": key_id})


class AuthMiddleware(AbstractAuthenticationMiddleware):
    """Puts the caller's principal on ``request.user``; 401 without a usable credential."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        services = connection.app.state.services
        limits: Limits = services.limits
        client = client_address(connection)
        credential = _credential(connection)
        if not credential:
            credential = _query_token(connection)
            if credential is not None:
                limits.token.take(credential)
                return AuthenticationResult(user=TokenPrincipal(token=credential), auth=None)
            limits.auth_failures.take(client)
            raise Unauthorized("missing credential: send 'Authorization: Bearer <key>'")
        metrics_token = services.settings.metrics_token
        if (
            metrics_token
            and connection.scope["path"] == "/metrics"
            and hmac.compare_digest(credential.encode(), metrics_token.encode())
        ):
            return AuthenticationResult(user=MetricsPrincipal(), auth=None)
        store: KeyStore = services.keys
        guessing = limits.auth_failures.exhausted(client)
        principal = await store.lookup(credential, ask_database=not guessing)
        if principal is not None:
            limits.key.take(principal.idempotency_scope)
            return AuthenticationResult(user=principal, auth=None)
        if looks_like_recipient_token(credential):
            limits.token.take(credential)
            return AuthenticationResult(user=TokenPrincipal(token=credential), auth=None)
        limits.auth_failures.take(client)
        raise Unauthorized(
            "invalid credential: neither an API key this server knows (revoked keys stop"
            " working) nor a recipient token (hex HMAC-SHA256, or <unix_exp>.<hex>)"
        )


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The caller's address (behind a proxy, uvicorn's proxy_headers put the client's)."""
    client = connection.scope.get("client")
    return str(client[0]) if client else "unknown"


def _credential(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _query_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """EventSource cannot send headers, so the inbox stream also takes ``?token=``:
    a recipient token only. URLs end up in proxy logs and browser history, which is
    tolerable for a token that opens one inbox (and expires), not for an API key."""
    if not connection.scope["path"].endswith("/stream"):
        return None
    token = connection.query_params.get("token")
    if not token:
        return None
    if not looks_like_recipient_token(str(token)):
        raise Unauthorized(
            "'token' in the URL must be a recipient token;"
            " send API keys as 'Authorization: Bearer <key>'"
        )
    return str(token)


def _is_options(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """OPTIONS (the Allow header, CORS preflights) carries no credential and shows no
    data: the authentication middleware lets it through, so the guards do too."""
    return bool(connection.scope.get("method") == "OPTIONS")


def require_role(role: Role) -> Any:
    """Guard: an API key with ``role`` (admin covers send); recipient tokens get 403."""

    # async: Litestar runs a sync guard on a thread, a hop per request.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if _is_options(connection):
            return
        principal = connection.user
        if isinstance(principal, TokenPrincipal):
            raise Forbidden("a recipient token opens only its own inbox and preferences")
        if not isinstance(principal, KeyPrincipal):
            raise Unauthorized("missing credential")
        if role == "admin" and principal.role != "admin":
            raise Forbidden("this endpoint needs an admin key")

    return guard


async def recipient_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard for ``/api/inbox/{recipient}`` and a recipient's preferences.

    API keys pass; a recipient token passes only for the recipient in the path.
    """
    if _is_options(connection):
        return
    principal = connection.user
    if isinstance(principal, KeyPrincipal):
        return
    if not isinstance(principal, TokenPrincipal):
        raise Unauthorized("missing credential")
    external_id = str(connection.path_params.get("recipient", ""))
    secrets = connection.app.state.services.settings.inbox_secrets
    if not secrets:
        raise Forbidden(
            "recipient tokens are off on this server: set POSTBELL_INBOX_SECRET to sign them"
        )
    verdict = check_recipient_token(secrets, external_id, principal.token)
    if verdict == "bad":
        connection.app.state.services.limits.auth_failures.take(client_address(connection))
    if verdict == "expired":
        raise Unauthorized("the recipient token has expired: issue a new one")
    if verdict != "ok":
        raise Forbidden(
            f"this token does not open {external_id[:100]!r}'s inbox: a recipient token is"
            " computed for one recipient id with POSTBELL_INBOX_SECRET (see docs/inbox.md)"
        )
