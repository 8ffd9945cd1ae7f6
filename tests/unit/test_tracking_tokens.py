"""Click and open tokens (app/core/tokens.py): a click token reads back to exactly the
delivery and URL it signs; no other purpose's token, secret or URL passes; rotation
keeps old tokens valid."""

from __future__ import annotations

from postbell.app.core import tokens

SECRET = "s1"


def test_click_token_round_trip_and_rotation() -> None:
    token = tokens.click_token(SECRET, 7, "https://example.org/a?b=c#d")
    assert tokens.read_click_token([SECRET], token) == (7, "https://example.org/a?b=c#d")
    assert tokens.read_click_token(["new", SECRET], token) == (7, "https://example.org/a?b=c#d")
    assert tokens.read_click_token(["other"], token) is None


def test_purposes_do_not_mix() -> None:
    """An open token is no click token and the other way round; an unsubscribe token
    whose fields look like a click's is refused too."""
    click = tokens.click_token(SECRET, 7, "https://example.org/")
    assert tokens.read_open_token([SECRET], click) is None
    assert tokens.read_unsubscribe_token([SECRET], click) is None
    opened = tokens.open_token(SECRET, 7)
    assert tokens.read_open_token([SECRET], opened) == 7
    assert tokens.read_click_token([SECRET], opened) is None
    lookalike = tokens.unsubscribe_token(SECRET, "7", "https://example.org/")
    assert tokens.read_click_token([SECRET], lookalike) is None


def test_malformed_tokens_are_refused_not_raised() -> None:
    for token in ["", ".", "a.b", "²³.AAAA", "0.AAAA", "%%%.@@@", "1" * 30 + ".AAAA"]:
        assert tokens.read_open_token([SECRET], token) is None, token
        assert tokens.read_click_token([SECRET], token) is None, token
