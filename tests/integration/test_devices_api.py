"""Push devices: register, list, remove; and the SSRF guard on recipients' URLs."""

from __future__ import annotations

import httpx
import pytest

from postbell.app.api.main import create_app
from tests.conftest import ADMIN, api_client, make_settings, unique


async def test_register_list_move_and_remove(api: httpx.AsyncClient) -> None:
    alice, bob = unique("alice"), unique("bob")
    token = unique("fcm-token")
    created = await api.post(
        f"/api/recipients/{alice}/devices",
        headers=ADMIN,
        json={"token": token, "platform": "android"},
    )
    assert created.status_code == 201
    assert (created.json()["token"], created.json()["platform"], created.json()["disabled_at"]) == (
        token,
        "android",
        None,
    )
    assert (
        await api.get(f"/api/recipients/{alice}", headers=ADMIN)
    ).status_code == 200  # created on the fly
    listed = (await api.get(f"/api/recipients/{alice}/devices", headers=ADMIN)).json()["items"]
    assert [d["token"] for d in listed] == [token]
    # The same phone, now signed in as bob.
    await api.post(
        f"/api/recipients/{bob}/devices",
        headers=ADMIN,
        json={"token": token, "platform": "android"},
    )
    assert (await api.get(f"/api/recipients/{alice}/devices", headers=ADMIN)).json()["items"] == []
    assert (
        await api.delete(f"/api/recipients/{bob}/devices/{token}", headers=ADMIN)
    ).status_code == 204
    assert (
        await api.delete(f"/api/recipients/{bob}/devices/{token}", headers=ADMIN)
    ).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "", "platform": "ios"}, "token"),
        ({"token": "t", "platform": "blackberry"}, "platform"),
        ({"token": "t"}, "platform"),
    ],
)
async def test_bad_device_is_422(api: httpx.AsyncClient, body: dict[str, str], field: str) -> None:
    response = await api.post(f"/api/recipients/{unique()}/devices", headers=ADMIN, json=body)
    assert (response.status_code, response.json()["field"]) == (422, field)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest/meta-data",
        "http://192.168.0.10/x",
        "http://0.0.0.0/x",
    ],
)
async def test_private_webhook_urls_are_refused(database_url: str, url: str) -> None:
    """Without POSTBELL_WEBHOOK_ALLOW_PRIVATE, webhook URLs may not point inside the network."""
    settings = make_settings(database_url)
    async with api_client(create_app(settings)) as client:
        for field in ("webhook_url", "slack_webhook_url", "discord_webhook_url"):
            response = await client.put(
                f"/api/recipients/{unique()}", headers=ADMIN, json={field: url}
            )
            assert (response.status_code, response.json()["field"]) == (422, field), response.text
        public = await client.put(
            f"/api/recipients/{unique()}",
            headers=ADMIN,
            json={"webhook_url": "https://hooks.example.org/x"},
        )
        assert public.status_code == 200
