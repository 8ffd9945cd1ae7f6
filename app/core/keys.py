"""API keys: generated with 256 bits of entropy, stored only as their SHA-256.

A fast hash is safe for a key of that entropy, and it runs on every request (no
bcrypt). The key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
from typing import Literal

from postbell.app.core import db

Role = Literal["admin", "send"]  # pragma: no mutate (type only)
ROLES: tuple[Role, ...] = ("admin", "send")
KEY_PREFIX = "pb_"
MAX_NAME = 100


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a key's label (None: nothing): 1 to 100
    printable characters."""
    if not name.strip():
        return "the name is empty"
    if len(name) > MAX_NAME:
        return f"at most {MAX_NAME} characters, got {len(name)}"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "control characters are not allowed"
    return None


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def store_key(conn: db.Conn, key: str, role: Role, name: str | None = None) -> int:
    """Store ``key`` (hashed) with ``role``; answer its id. Storing it again re-activates it."""
    row = await db.fetch_one(
        conn,
        "api_keys_insert",
        {"key_hash": hash_key(key), "prefix": key[:8], "name": name, "role": role},
    )
    assert row is not None  # ON CONFLICT ... DO UPDATE returns the row either way
    return int(row["id"])


async def create_key(conn: db.Conn, role: Role, name: str | None = None) -> tuple[int, str]:
    """Store a new key (hashed); answer its id and the key, which is shown only once."""
    key = generate_key()
    return await store_key(conn, key, role, name), key
