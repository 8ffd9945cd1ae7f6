"""Recipient tokens and API key hashing."""

from __future__ import annotations

import hashlib
import hmac

from postbell.app.core import keys, tokens


def test_token_is_hmac_sha256_hex_of_the_external_id() -> None:
    """Host apps compute it themselves; the formula is the contract."""
    expected = hmac.new(b"s3", b"user-1", hashlib.sha256).hexdigest()
    assert tokens.recipient_token("s3", "user-1") == expected
    assert tokens.check_recipient_token(["s3"], "user-1", expected) == "ok"


def test_token_for_another_recipient_is_rejected() -> None:
    token = tokens.recipient_token("s3", "user-1")
    assert tokens.check_recipient_token(["s3"], "user-2", token) == "bad"


def test_rotated_secrets_all_verify() -> None:
    old = tokens.recipient_token("old", "u")
    assert tokens.check_recipient_token(["new", "old"], "u", old) == "ok"
    assert tokens.check_recipient_token(["new"], "u", old) == "bad"


def test_expiring_token() -> None:
    token = tokens.recipient_token("s3", "u", expires_at=2_000)
    digest = hmac.new(b"s3", b"u.2000", hashlib.sha256).hexdigest()
    assert token == f"2000.{digest}"
    assert tokens.check_recipient_token(["s3"], "u", token, now=1_999) == "ok"
    assert tokens.check_recipient_token(["s3"], "u", token, now=2_001) == "expired"
    tampered = token.replace("2000.", "9999.")
    assert tokens.check_recipient_token(["s3"], "u", tampered, now=1_999) == "bad"


def test_no_secret_configured_rejects_every_token() -> None:
    assert tokens.check_recipient_token([], "u", tokens.recipient_token("s", "u")) == "bad"


def test_keys_are_random_and_stored_as_sha256() -> None:
    a, b = keys.generate_key(), keys.generate_key()
    assert a != b and a.startswith("pb_") and len(a) > 40
    assert keys.hash_key(a) == hashlib.sha256(a.encode()).digest()
