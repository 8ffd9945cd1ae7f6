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
