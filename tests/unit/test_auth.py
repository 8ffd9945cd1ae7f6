"""Recipient tokens and API key hashing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import typing

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
    """The documented host-side recipe: hex(HMAC(secret, "postbell:inbox" NUL id NUL exp))."""
    token = tokens.recipient_token("s3", "u", expires_at=2_000)
    digest = hmac.new(b"s3", b"postbell:inbox\x00u\x002000", hashlib.sha256).hexdigest()
    assert token == f"2000.{digest}"
    assert tokens.check_recipient_token(["s3"], "u", token, now=1_999) == "ok"
    assert tokens.check_recipient_token(["s3"], "u", token, now=2_001) == "expired"
    tampered = token.replace("2000.", "9999.")
    assert tokens.check_recipient_token(["s3"], "u", tampered, now=1_999) == "bad"


def test_no_secret_configured_rejects_every_token() -> None:
    assert tokens.check_recipient_token([], "u", tokens.recipient_token("s", "u")) == "bad"


def test_keys_are_random_and_stored_as_sha256() -> None:
    a, b = keys.generate_key(), keys.generate_key()
    assert a != b and a.startswith("pb_")
    # 256 bits of entropy: the part after the prefix is 32 random bytes, URL-safe base64
    assert len(base64.urlsafe_b64decode(a.removeprefix("pb_") + "=")) == 32
    assert len(a) == len("pb_") + 43
    assert keys.hash_key(a) == hashlib.sha256(a.encode()).digest()


def test_roles_are_the_two_the_api_knows() -> None:
    """The CLI offers ROLES as --role's choices; the API checks keys by these names."""
    assert keys.ROLES == typing.get_args(keys.Role) == ("admin", "send")


def test_a_key_name_is_1_to_100_printable_characters() -> None:
    assert keys.name_problem("deploy bot · café") is None
    assert keys.name_problem("x" * 100) is None
    assert keys.name_problem("") == "the name is empty"
    assert keys.name_problem(" \t ") == "the name is empty"
    assert keys.name_problem("x" * 101) == "at most 100 characters, got 101"
    for bad in ("a\x00b", "line\nbreak", "esc\x1b[31m"):
        assert keys.name_problem(bad) == "control characters are not allowed", bad


def test_an_id_with_a_dot_cannot_forge_another_recipients_expiring_token() -> None:
    """The old ambiguity: the plain token of "user-1.99999999999", rewritten as
    "99999999999.<hex>", opened user-1's inbox. Plain and expiring tokens now sign
    inputs no external id can make equal."""
    plain = tokens.recipient_token("s3", "user-1.99999999999")
    forged = "99999999999." + plain
    assert tokens.check_recipient_token(["s3"], "user-1", forged, now=0) == "bad"
    assert tokens.check_recipient_token(["s3"], "user-1.99999999999", plain) == "ok"


def test_a_token_of_one_purpose_is_never_valid_for_another() -> None:
    """An inbox token for a crafted id is not an unsubscribe link (the old flaw: a prefix
    of the token for "unsubscribe\\nuser-1\\nnews" unsubscribed user-1 from news). The
    one id that would sign the same bytes holds NUL, which no external id may."""
    import base64

    import pytest

    unsubscribe = tokens.unsubscribe_token("s3", "user-1", "news")
    assert tokens.read_unsubscribe_token(["s3"], unsubscribe) == ("user-1", "news")
    payload = base64.urlsafe_b64encode(b"user-1\x00news").decode().rstrip("=")
    for crafted_id in ("unsubscribe\nuser-1\nnews", "postbell:unsubscribe\nuser-1\nnews"):
        inbox = bytes.fromhex(tokens.recipient_token("s3", crafted_id))
        mac = base64.urlsafe_b64encode(inbox[:16]).decode().rstrip("=")
        assert tokens.read_unsubscribe_token(["s3"], f"{payload}.{mac}") is None
    with pytest.raises(ValueError):
        tokens.recipient_token("s3", "postbell:unsubscribe\x00user-1\x00news")
    # fields cannot be shifted into one another: ("ab", "c") and ("a", "bc") differ
    assert tokens.sign("s3", "unsubscribe", "ab", "c") != tokens.sign(
        "s3", "unsubscribe", "a", "bc"
    )
    assert tokens.sign("s3", "inbox", "u", "1") != tokens.sign("s3", "unsubscribe", "u", "1")


def test_signed_fields_refuse_nul() -> None:
    import pytest

    with pytest.raises(ValueError):
        tokens.sign("s3", "inbox", "a\x00b")
    assert tokens.check_recipient_token(["s3"], "a\x00b", "0" * 64) == "bad"
    assert tokens.read_unsubscribe_token(["s3"], "garbage") is None
    assert tokens.read_unsubscribe_token(["s3"], "") is None


def test_every_configured_secret_verifies_whatever_its_place() -> None:
    """Rotation: a token of the first secret verifies with the second listed after it
    (a later secret's mismatch must not undo an earlier match)."""
    old = tokens.recipient_token("old", "u")
    assert tokens.check_recipient_token(["old", "new"], "u", old) == "ok"
    link = tokens.unsubscribe_token("old", "u", "news")
    assert tokens.read_unsubscribe_token(["old", "new"], link) == ("u", "news")


def test_a_token_expires_after_its_second_not_at_it() -> None:
    token = tokens.recipient_token("s3", "u", expires_at=2_000)
    assert tokens.check_recipient_token(["s3"], "u", token, now=2_000) == "ok"
    assert tokens.check_recipient_token(["s3"], "u", token, now=2_000.001) == "expired"


def test_what_looks_like_a_recipient_token() -> None:
    assert tokens.looks_like_recipient_token("a" * 64)
    assert tokens.looks_like_recipient_token("2000." + "a" * 64)
    for other in ("pb_key", "A" * 64, "a" * 63, "x.aaaa", ""):
        assert not tokens.looks_like_recipient_token(other), other
    assert tokens.check_recipient_token(["s3"], "u", "not-a-token") == "bad"


def test_unsubscribe_tokens_round_trip_for_every_padding() -> None:
    """Base64 without padding: ids of every length modulo 3 decode again."""
    for n in range(1, 8):
        external_id = "x" * n
        link = tokens.unsubscribe_token("s3", external_id, "c")
        assert "=" not in link
        assert tokens.read_unsubscribe_token(["s3"], link) == (external_id, "c")


def test_malformed_unsubscribe_tokens_are_refused() -> None:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    good = tokens.unsubscribe_token("s3", "u", "news")
    payload, mac = good.split(".")
    assert tokens.read_unsubscribe_token(["s3"], payload + mac) is None  # no dot
    assert tokens.read_unsubscribe_token(["s3"], f"{b64(b'unews')}.{mac}") is None  # no NUL
    assert tokens.read_unsubscribe_token(["s3"], f"{b64(b'u' + bytes([0]))}.{mac}") is None
    # a category holding NUL would re-split into three signed fields: refused
    forged_mac = b64(tokens.sign("s3", "unsubscribe", "u", "news", "x")[:16])
    forged = f"{b64(b'u' + bytes([0]) + b'news' + bytes([0]) + b'x')}.{forged_mac}"
    assert tokens.read_unsubscribe_token(["s3"], forged) is None


def test_nul_is_refused_with_a_clear_message() -> None:
    import pytest

    # the whole message, anchored: a message with anything added is not this message
    with pytest.raises(ValueError, match=r"^a signed field may not hold NUL$"):
        tokens.sign("s3", "inbox", "a\x00")
    with pytest.raises(ValueError, match=r"^an external id may not hold NUL$"):
        tokens.recipient_token("s3", "a\x00")


def test_a_recipient_token_never_shows_in_a_principals_repr() -> None:
    """Principals reach logs and tracebacks; the token they hold must not."""
    from postbell.app.api.auth import KeyPrincipal, TokenPrincipal

    assert "s3cr3t" not in repr(TokenPrincipal("s3cr3t"))
    assert KeyPrincipal(role="admin", key_id=None).idempotency_scope == "admin"
    assert KeyPrincipal(role="send", key_id=7).idempotency_scope == "7"
