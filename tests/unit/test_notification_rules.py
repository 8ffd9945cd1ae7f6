"""The rules a notification is checked against before the database sees it
(``notifications.service.check``): each bound at its edge, each refusal naming its
field and saying what is wrong."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from postbell.app.api.notifications import service
from postbell.app.api.notifications.schemas import NotificationIn
from postbell.app.core.errors import Invalid
from postbell.app.core.settings import Settings

NOW = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
SETTINGS = Settings.from_env({})


def check(**fields: Any) -> tuple[str, list[str] | None]:
    payload = msgspec.convert({"to": ["u-1"], **fields}, NotificationIn)
    return service.check(SETTINGS, payload, NOW)


def refusal(**fields: Any) -> tuple[str | None, str]:
    with pytest.raises(Invalid) as caught:
        check(**fields)
    return caught.value.field, caught.value.detail


def _json_of_size(size: int) -> dict[str, str]:
    """An object that is exactly ``size`` bytes as JSON: {"k":"xxx…"}."""
    return {"k": "x" * (size - len('{"k":""}'))}


def test_a_template_takes_no_text_fields() -> None:
    assert check(template="welcome", data={"a": 1}) == ("", ["u-1"])
    for name in ("message", "body", "title", "action_url"):
        value = "https://example.org/x" if name == "action_url" else "text"
        assert refusal(template="welcome", **{name: value}) == (
            name,
            f"give either 'template' or '{name}', not both: the template has the text",
        )


def test_data_goes_with_a_template_and_is_bounded() -> None:
    assert refusal(message="hi", data={"a": 1}) == ("data", "'data' goes with a 'template'")
    check(template="t", data=_json_of_size(service.MAX_DATA_BYTES))
    assert service.MAX_DATA_BYTES == 65_536
    assert refusal(template="t", data=_json_of_size(65_537)) == (
        "data",
        "data: larger than 65536 bytes as JSON",
    )


def test_metadata_is_at_most_16_kib() -> None:
    check(message="hi", metadata=_json_of_size(16_384))
    assert refusal(message="hi", metadata=_json_of_size(16_385)) == (
        "metadata",
        "metadata: larger than 16384 bytes as JSON",
    )


def test_an_expiry_at_most_ten_years_ahead() -> None:
    ten_years = NOW + dt.timedelta(days=3650)
    check(message="hi", expires_at=ten_years.isoformat())
    later = (ten_years + dt.timedelta(seconds=1)).isoformat()
    assert refusal(message="hi", expires_at=later) == (
        "expires_at",
        "expires_at is more than ten years ahead",
    )


def test_the_conflict_code_is_idempotency_conflict() -> None:
    assert service.IdempotencyConflict("x").code == "idempotency_conflict"
    assert service.MAX_IDEMPOTENCY_KEY == 255


def test_the_text_is_the_message_or_the_body() -> None:
    assert check(message="hi") == ("hi", ["u-1"])
    assert check(body="hello") == ("hello", ["u-1"])
    assert refusal(message="hi", body="hello") == (
        "body",
        "give either 'message' or 'body', not both",
    )
    needs = ("message", "the notification needs a 'message' (or 'body', or a 'template')")
    assert refusal() == needs
    assert refusal(message="   ") == needs
    assert refusal(body=" \n") == needs


def test_nul_characters_are_refused_in_the_field_that_has_them() -> None:
    """The schema refuses control characters before these rules run; the rules refuse
    NUL again for the text the database gets (a payload built in code skips the
    schema's patterns)."""
    for field in ("message", "body", "title"):
        fields = {"message": "hi", field: "a\x00b"} if field == "title" else {field: "a\x00b"}
        payload = msgspec.structs.replace(
            msgspec.convert({"to": ["u-1"], "message": "hi"}, NotificationIn),
            message=fields.get("message"),
            body=fields.get("body"),
            title=fields.get("title"),
        )
        with pytest.raises(Invalid) as caught:
            service.check(SETTINGS, payload, NOW)
        assert (caught.value.field, caught.value.detail) == (
            field,
            f"{field}: contains a NUL character",
        )
    assert check(message="hi", title="a title") == ("hi", ["u-1"])


def test_recipients_are_checked_one_by_one_and_deduplicated() -> None:
    assert check(message="hi", to=["a", "b", "a"]) == ("hi", ["a", "b"])
    assert refusal(message="hi", to=["a", "b\n"]) == (
        "to[1]",
        "to[1]: recipient ids may not contain control characters",
    )


def test_to_or_topic_never_both_never_neither() -> None:
    assert check(message="hi", to=None, topic="news") == ("hi", None)
    assert refusal(message="hi", topic="news") == (
        "topic",
        "give either 'to' or 'topic', not both",
    )
    assert refusal(message="hi", to=None) == (
        "to",
        "the notification needs 'to' (recipient ids) or 'topic'",
    )


def test_send_at_is_after_now_and_within_the_horizon() -> None:
    horizon = NOW + dt.timedelta(days=SETTINGS.send_at_horizon_days)
    check(message="hi", send_at=(NOW + dt.timedelta(seconds=1)).isoformat())
    check(message="hi", send_at=horizon.isoformat())
    past = ("send_at", "send_at is in the past")
    assert refusal(message="hi", send_at=NOW.isoformat()) == past
    assert refusal(message="hi", send_at=(NOW - dt.timedelta(days=1)).isoformat()) == past
    assert refusal(message="hi", send_at=(horizon + dt.timedelta(seconds=1)).isoformat()) == (
        "send_at",
        f"send_at is more than {SETTINGS.send_at_horizon_days} days ahead",
    )


def test_an_expiry_comes_after_the_send_time() -> None:
    later = NOW + dt.timedelta(hours=1)
    check(message="hi", expires_at=(NOW + dt.timedelta(seconds=1)).isoformat())
    after = ("expires_at", "expires_at must be after the send time")
    assert refusal(message="hi", expires_at=NOW.isoformat()) == after
    assert refusal(message="hi", send_at=later.isoformat(), expires_at=later.isoformat()) == after
    check(
        message="hi",
        send_at=later.isoformat(),
        expires_at=(later + dt.timedelta(seconds=1)).isoformat(),
    )


def test_a_fallback_names_another_channel_of_the_notification() -> None:
    check(message="hi", channels=["PUSH"], fallback={"PUSH": "EMAIL"})
    check(message="hi", fallback={"PUSH": "EMAIL"})  # no channels: the category's
    assert refusal(message="hi", fallback={"EMAIL": "EMAIL"}) == (
        "fallback.EMAIL",
        "fallback.EMAIL: a channel cannot fall back to itself",
    )
    assert refusal(message="hi", channels=["SMS"], fallback={"PUSH": "EMAIL"}) == (
        "fallback.PUSH",
        "fallback.PUSH: PUSH is not one of the notification's channels",
    )


def test_variants_carry_the_text_when_the_notification_has_none() -> None:
    two = [{"name": "a", "weight": 1, "title": "A"}, {"name": "b", "weight": 1, "body": "from b"}]
    assert check(experiment="e", variants=two) == ("from b", ["u-1"])
    templated = [
        {"name": "a", "weight": 1, "template": "t-a"},
        {"name": "b", "weight": 1, "template": "t-b"},
    ]
    assert check(experiment="e", variants=templated, data={"x": 1}) == ("", ["u-1"])
    # a variant's template makes 'data' welcome without a notification template
    assert check(experiment="e", variants=templated) == ("", ["u-1"])
    assert refusal(
        experiment="e",
        variants=[
            {"name": "a", "weight": 1, "title": "t"},
            {"name": "b", "weight": 1, "title": "u"},
        ],
    ) == (
        "message",
        "the notification needs a 'message' (or 'body', or a 'template')",
    )
    assert refusal(experiment="e", variants=templated, data=_json_of_size(65_537)) == (
        "data",
        "data: larger than 65536 bytes as JSON",
    )


def test_with_text_and_template_variants_the_first_text_stands_for_the_message() -> None:
    """Variants that mix a template and a text, and no message: the text variant's
    body stands in for the notification's (the list view, the SQL console)."""
    mixed = [
        {"name": "a", "weight": 1, "template": "t-a"},
        {"name": "b", "weight": 1, "body": "from b"},
    ]
    assert check(experiment="e", variants=mixed) == ("from b", ["u-1"])
