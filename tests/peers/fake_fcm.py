"""A local Google OAuth token endpoint + FCM HTTP v1 endpoint, for the real firebase-admin SDK.

The peer writes a service-account JSON with a fresh RSA key whose ``token_uri``
points at its own ``/token``: the SDK signs a JWT with that key, the peer checks the
signature with the public key and answers an access token; sends must carry it.

Per device token, ``script(token, ["UNAVAILABLE", "OK"])`` scripts replies in order;
``unregister(token)`` makes a token dead for good (404 UNREGISTERED, FCM's format).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from tests.peers.http import HttpPeer

PROJECT = "postbell-test"
_ERRORS: dict[str, tuple[int, str, str | None, dict[str, str]]] = {
    # code: (HTTP status, google status, FCM errorCode, headers)
    "UNREGISTERED": (404, "NOT_FOUND", "UNREGISTERED", {}),
    "INVALID_TOKEN": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", {}),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", {"Retry-After": "1"}),
    "UNAVAILABLE": (503, "UNAVAILABLE", "UNAVAILABLE", {}),
    "INTERNAL": (500, "INTERNAL", "INTERNAL", {}),
}


def error_body(code: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    status, google_status, fcm_code, headers = _ERRORS[code]
    message = {
        "INVALID_TOKEN": "The registration token is not a valid FCM registration token",
        "UNREGISTERED": "Requested entity was not found.",
    }.get(code, code.lower())
    error: dict[str, Any] = {"code": status, "message": message, "status": google_status}
    if fcm_code:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}
        ]
    return status, {"error": error}, headers


class FcmPeer(HttpPeer):
    def __init__(self, folder: Path) -> None:
        super().__init__()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.client_email = f"postbell@{PROJECT}.iam.gserviceaccount.com"
        self.credentials = {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": secrets.token_hex(20),
            "private_key": key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            "client_email": self.client_email,
            "client_id": "1234567890",
            "token_uri": f"{self.url}/token",
        }
        folder.mkdir(parents=True, exist_ok=True)
        self.credentials_path = folder / "service-account.json"
        self.credentials_path.write_text(json.dumps(self.credentials))
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.accepted: list[dict[str, Any]] = []
        self.scripts: dict[str, list[str]] = {}
        self.dead: set[str] = set()

    def env(self) -> dict[str, str]:
        return {
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.credentials_path),
            "FCM_API_URL": self.url,
        }

    def script(self, token: str, replies: list[str]) -> None:
        with self.lock:
            self.scripts[token] = list(replies)

    def unregister(self, token: str) -> None:
        with self.lock:
            self.dead.add(token)

    def messages_for(self, token: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.accepted if m.get("token") == token]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            # google-auth signs for Google's token endpoint whatever token_uri says.
            claims = jwt.decode(
                str(form.get("assertion", "")),
                certs=self.public_pem,
                audience=["https://oauth2.googleapis.com/token", f"{self.url}/token"],
            )
        except ValueError as exc:
            return web.json_response(
                {"error": "invalid_grant", "error_description": str(exc)}, status=400
            )
        if claims.get("iss") != self.client_email:
            return web.json_response({"error": "invalid_grant"}, status=400)
        token = "ya29." + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens.add(token)
            self.token_requests += 1
        return web.json_response(
            {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        )

    async def _send(self, request: web.Request) -> web.Response:
        await self.record(request)
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with self.lock:
            authorized = bearer in self.tokens
        if not authorized or request.match_info["project"] != PROJECT:
            status = 401 if not authorized else 403
            body = {
                "error": {"code": status, "message": "unauthenticated", "status": "UNAUTHENTICATED"}
            }
            return web.json_response(body, status=status)
        message = (await request.json()).get("message", {})
        token = message.get("token", "")
        with self.lock:
            if token in self.dead:
                reply = "UNREGISTERED"
            else:
                queue = self.scripts.get(token)
                reply = queue.pop(0) if queue else "OK"
            if reply == "OK":
                self.accepted.append(message)
                name = f"projects/{PROJECT}/messages/{len(self.accepted)}"
        if reply != "OK":
            status, body, headers = error_body(reply)
            return web.json_response(body, status=status, headers=headers)
        return web.json_response({"name": name})
