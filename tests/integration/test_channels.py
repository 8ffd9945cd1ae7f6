"""Every channel through its real SDK or protocol, against local peers that speak the
providers' wire formats: FCM (firebase-admin), Twilio (twilio), webhooks, Slack,
Discord; retries, dead letters and fallbacks."""

from __future__ import annotations

import itertools
import os
from typing import Any

import httpx

from postbell.app.core import db
from postbell.app.core.channels import CHANNELS
from tests.conftest import ADMIN, WEBHOOK_SECRET, unique, wait_until
from tests.integration.test_delivery_flow import send, settled
from tests.peers.fake_fcm import FcmPeer
from tests.peers.fake_teams import TeamsPeer
from tests.peers.fake_telegram import TelegramPeer
from tests.peers.fake_twilio import FROM_NUMBER, TwilioPeer
from tests.peers.webhooks import WebhookReceiver, verify_signature


def by_channel(notification: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["channel"]: d for d in notification["deliveries"]}


_PHONES = itertools.count(1)


def phone() -> str:
    """A number no other test of this session uses (random ones could collide)."""
    return f"+1415{os.getpid() % 1000:03d}{next(_PHONES):04d}"


# -- PUSH --------------------------------------------------------------------------------


async def test_push_to_every_device_disabling_dead_tokens(
    api: httpx.AsyncClient, worker: None, fcm: FcmPeer
) -> None:
    rid = unique("phone-user")
    good, web, dead = unique("tok-android"), unique("tok-web"), unique("tok-dead")
    for token, platform in ((good, "android"), (web, "web"), (dead, "ios")):
        await api.post(
            f"/api/recipients/{rid}/devices",
            headers=ADMIN,
            json={"token": token, "platform": platform},
        )
    fcm.unregister(dead)
    nid = await send(
        api,
        to=[rid],
        title="Event tonight",
        message="Doors at 7",
        channels=["PUSH"],
        priority="high",
        action_url="https://example.org/e/1",
    )
    push = by_channel(await settled(api, nid, {"sent": 1}))["PUSH"]
    assert push["attempts"] == 1
    (android,) = fcm.messages_for(good)
    assert android["notification"] == {"title": "Event tonight", "body": "Doors at 7"}
    assert android["android"]["priority"] == "high"
    assert android["data"]["delivery_id"] == str(push["id"])
    (browser,) = fcm.messages_for(web)
    assert browser["webpush"]["fcm_options"]["link"] == "https://example.org/e/1"
    devices = {
        d["token"]: d
        for d in (await api.get(f"/api/recipients/{rid}/devices", headers=ADMIN)).json()["items"]
    }
    assert (
        devices[dead]["disabled_at"] is not None
        and devices[dead]["disabled_reason"] == "unregistered"
    )
    assert devices[good]["disabled_at"] is None
    # The dead token is never tried again.
    again = await send(api, to=[rid], message="second", channels=["PUSH"])
    await settled(api, again, {"sent": 1})
    assert fcm.messages_for(dead) == [] and len(fcm.messages_for(good)) == 2


async def test_push_unavailable_is_retried(
    api: httpx.AsyncClient, worker: None, fcm: FcmPeer
) -> None:
    rid, token = unique("retry-push"), unique("tok")
    await api.post(
        f"/api/recipients/{rid}/devices",
        headers=ADMIN,
        json={"token": token, "platform": "android"},
    )
    fcm.script(token, ["QUOTA_EXCEEDED"])
    nid = await send(api, to=[rid], message="again", channels=["PUSH"])
    push = by_channel(await settled(api, nid, {"sent": 1}))["PUSH"]
    assert push["attempts"] == 2 and "Quota" in push["last_error"]


async def test_push_fallback_to_sms_when_no_device_or_dead(
    api: httpx.AsyncClient, worker: None, fcm: FcmPeer, twilio: TwilioPeer
) -> None:
    no_device, all_dead = unique("nodev"), unique("alldead")
    numbers = {no_device: phone(), all_dead: phone()}
    for rid, number in numbers.items():
        await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"phone": number})
    token = unique("tok-gone")
    await api.post(
        f"/api/recipients/{all_dead}/devices",
        headers=ADMIN,
        json={"token": token, "platform": "ios"},
    )
    fcm.unregister(token)
    nid = await send(
        api,
        to=[no_device, all_dead],
        message="Your code is 1234",
        channels=["PUSH"],
        fallback={"PUSH": "SMS"},
    )
    body = await settled(api, nid, {"skipped": 1, "dead": 1, "sent": 2})
    rows = {(d["recipient"], d["channel"]): d for d in body["deliveries"]}
    assert (rows[(no_device, "PUSH")]["status"], rows[(no_device, "PUSH")]["reason"]) == (
        "skipped",
        "no_device",
    )
    assert (rows[(all_dead, "PUSH")]["status"], rows[(all_dead, "PUSH")]["reason"]) == (
        "dead",
        "unregistered",
    )
    assert rows[(no_device, "SMS")]["fallback_reason"] == "PUSH no_device"
    assert rows[(no_device, "SMS")]["fallback_for"] == rows[(no_device, "PUSH")]["id"]
    assert rows[(all_dead, "SMS")]["fallback_reason"] == "PUSH dead"
    for number in numbers.values():
        (sms,) = twilio.to(number)
        assert sms["Body"] == "Your code is 1234"


# -- SMS -----------------------------------------------------------------------------------


async def test_sms_through_twilio(api: httpx.AsyncClient, worker: None, twilio: TwilioPeer) -> None:
    rid, number = unique("sms"), phone()
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"phone": number})
    nid = await send(
        api,
        to=[rid],
        title="Approved",
        message="Welcome in",
        channels=["SMS"],
        action_url="https://example.org/c/1",
    )
    sms_delivery = by_channel(await settled(api, nid, {"sent": 1}))["SMS"]
    (sms,) = twilio.to(number)
    assert (sms["From"], sms["Body"]) == (
        FROM_NUMBER,
        "Approved\nWelcome in\nhttps://example.org/c/1",
    )
    assert (
        sms["StatusCallback"]
        == f"https://postbell.example.org/api/callbacks/twilio?d={sms_delivery['id']}"
    )


async def test_sms_errors_are_classified(
    api: httpx.AsyncClient, worker: None, twilio: TwilioPeer
) -> None:
    cases = {"invalid": [21211], "stopped": [21610], "busy": [503, 429]}
    ids = {}
    for name, codes in cases.items():
        rid, number = unique(name), phone()
        await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"phone": number})
        twilio.script(number, codes)
        ids[name] = (rid, await send(api, to=[rid], message="x", channels=["SMS"]))
    invalid = by_channel(await settled(api, ids["invalid"][1], {"dead": 1}))["SMS"]
    assert invalid["reason"] == "invalid_address"
    stopped = by_channel(await settled(api, ids["stopped"][1], {"dead": 1}))["SMS"]
    assert stopped["reason"] == "unsubscribed"
    recipient = (await api.get(f"/api/recipients/{ids['stopped'][0]}", headers=ADMIN)).json()
    assert recipient["phone_inactive_at"] is not None
    busy = by_channel(await settled(api, ids["busy"][1], {"sent": 1}))["SMS"]
    assert busy["attempts"] == 3


async def test_bad_phone_number_is_422(api: httpx.AsyncClient) -> None:
    response = await api.put(
        f"/api/recipients/{unique()}", headers=ADMIN, json={"phone": "555-1234"}
    )
    assert (response.status_code, response.json()["field"]) == (422, "phone")


# -- WEBHOOK, SLACK, DISCORD -------------------------------------------------------------------


async def test_webhook_is_signed_and_retried_with_the_same_delivery_id(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    rid, path = unique("hook"), f"/hooks/{unique()}"
    receiver.script(path, [503, (429, {"Retry-After": "0"})])
    await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"webhook_url": receiver.url_for(path)}
    )
    nid = await send(
        api, to=[rid], title="Hi", message="Body text", channels=["WEBHOOK"], metadata={"event": 7}
    )
    hook = by_channel(await settled(api, nid, {"sent": 1}))["WEBHOOK"]
    assert hook["attempts"] == 3
    requests = receiver.at(path)
    assert receiver.delivery_ids(path) == [str(hook["id"])] * 3
    for request in requests:
        assert verify_signature(WEBHOOK_SECRET, request.headers, request.body)
    assert requests[-1].json() == {
        "id": str(hook["id"]),
        "notification_id": nid,
        "recipient": rid,
        "title": "Hi",
        "body": "Body text",
        "action_url": None,
        "category": None,
        "priority": "normal",
        "metadata": {"event": 7},
    }
    assert not verify_signature("another secret", requests[-1].headers, requests[-1].body)


async def test_recipient_secret_signs_its_webhooks(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    rid, path = unique("own-secret"), f"/hooks/{unique()}"
    await api.put(
        f"/api/recipients/{rid}",
        headers=ADMIN,
        json={"webhook_url": receiver.url_for(path), "webhook_secret": "per-recipient"},
    )
    await settled(api, await send(api, to=[rid], message="x", channels=["WEBHOOK"]), {"sent": 1})
    (request,) = receiver.at(path)
    assert verify_signature("per-recipient", request.headers, request.body)


async def test_webhook_410_is_dead_then_requeued_from_the_dead_letter_api(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    rid, path = unique("gone"), f"/hooks/{unique()}"
    receiver.script(path, [410])
    await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"webhook_url": receiver.url_for(path)}
    )
    nid = await send(api, to=[rid], message="x", channels=["WEBHOOK"])
    hook = by_channel(await settled(api, nid, {"dead": 1}))["WEBHOOK"]
    assert (hook["reason"], hook["attempts"]) == ("permanent_error", 1) and "410" in hook[
        "last_error"
    ]
    dead = (
        await api.get(
            "/api/dead-letters", headers=ADMIN, params={"channel": "WEBHOOK", "limit": 500}
        )
    ).json()
    assert hook["id"] in [d["id"] for d in dead["items"]]
    assert (await api.post(f"/api/dead-letters/{hook['id']}/retry", headers=ADMIN)).json() == {
        "retried": 1
    }
    await settled(api, nid, {"sent": 1})
    assert receiver.delivery_ids(path) == [str(hook["id"])] * 2


async def test_slack_and_discord_payloads(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    rid = unique("chat")
    slack, discord = f"/slack/{unique()}", f"/discord/{unique()}"
    receiver.script(
        discord,
        [
            (
                429,
                {"Content-Type": "application/json"},
                '{"message": "You are being rate limited.", "retry_after": 0.1, "global": false}',
            )
        ],
    )
    await api.put(
        f"/api/recipients/{rid}",
        headers=ADMIN,
        json={
            "slack_webhook_url": receiver.url_for(slack),
            "discord_webhook_url": receiver.url_for(discord),
        },
    )
    nid = await send(
        api,
        to=[rid],
        title="Release <1.0>",
        message="It's out & ready",
        channels=["SLACK", "DISCORD"],
        action_url="https://example.org/r",
    )
    await settled(api, nid, {"sent": 2})
    (slack_body,) = receiver.as_json(slack)
    assert (
        slack_body["text"]
        == "*Release &lt;1.0&gt;*\nIt's out &amp; ready\n<https://example.org/r|Open>"
    )
    assert slack_body["blocks"][1]["elements"][0]["url"] == "https://example.org/r"
    discord_body = receiver.as_json(discord)[-1]
    assert discord_body == {
        "content": "It's out & ready",
        "embeds": [{"title": "Release <1.0>", "url": "https://example.org/r"}],
        "allowed_mentions": {"parse": []},
    }


async def test_unknown_discord_webhook_is_dead(
    api: httpx.AsyncClient, worker: None, receiver: WebhookReceiver
) -> None:
    rid, path = unique("nohook"), f"/discord/{unique()}"
    receiver.script(
        path,
        [
            (
                404,
                {"Content-Type": "application/json"},
                '{"message": "Unknown Webhook", "code": 10015}',
            )
        ],
    )
    await api.put(
        f"/api/recipients/{rid}",
        headers=ADMIN,
        json={"discord_webhook_url": receiver.url_for(path)},
    )
    nid = await send(api, to=[rid], message="x", channels=["DISCORD"])
    assert (
        "Unknown Webhook"
        in by_channel(await settled(api, nid, {"dead": 1}))["DISCORD"]["last_error"]
    )


async def test_every_channel_in_one_notification(
    api: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    receiver: WebhookReceiver,
    fcm: FcmPeer,
    twilio: TwilioPeer,
    telegram: TelegramPeer,
    teams: TeamsPeer,
) -> None:
    """Every channel in CHANNELS, each through its peer, for one recipient."""
    rid, number, token = unique("all"), phone(), unique("tok")
    twilio.open_session(number)
    key = unique("all-cat")
    response = await api.put(
        f"/api/categories/{key}",
        headers=ADMIN,
        json={"apprise_urls": [f"json://127.0.0.1:{receiver.port}/all/{rid}/apprise"]},
    )
    assert response.status_code == 200, response.text
    await api.put(
        f"/api/recipients/{rid}",
        headers=ADMIN,
        json={
            "email": f"{rid}@example.org",
            "phone": number,
            "webhook_url": receiver.url_for(f"/all/{rid}"),
            "slack_webhook_url": receiver.url_for(f"/all/{rid}/slack"),
            "discord_webhook_url": receiver.url_for(f"/all/{rid}/discord"),
            "whatsapp": number,
            "telegram_chat_id": telegram.chat("31337"),
            "teams_webhook_url": teams.url_for(f"/all/{rid}/teams"),
        },
    )
    await api.post(
        f"/api/recipients/{rid}/devices",
        headers=ADMIN,
        json={"token": token, "platform": "android"},
    )
    channels = list(CHANNELS)
    nid = await send(api, to=[rid], message="everywhere", channels=channels, category=key)
    body = await settled(api, nid, {"sent": len(channels)})
    assert sorted(d["channel"] for d in body["deliveries"]) == sorted(channels)


async def test_unconfigured_channel_is_skipped(fresh_database_url: str) -> None:
    """Without Twilio settings SMS deliveries are skipped (channel_not_configured)."""
    from postbell.app.api.main import create_app
    from tests.conftest import api_client, make_settings, running_worker

    settings = make_settings(fresh_database_url)
    async with api_client(create_app(settings)) as client, running_worker(settings):
        await client.put("/api/recipients/x", headers=ADMIN, json={"phone": "+14155550199"})
        response = await client.post(
            "/api/notifications",
            headers=ADMIN,
            json={"to": ["x"], "message": "m", "channels": ["IN_APP", "SMS"]},
        )
        nid = response.json()["id"]

        async def states() -> dict[str, Any] | None:
            body = (await client.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
            return body if body["delivery_counts"] == {"sent": 1, "skipped": 1} else None

        body = await wait_until(states)
    assert {d["channel"]: d["reason"] for d in body["deliveries"]} == {
        "IN_APP": None,
        "SMS": "channel_not_configured",
    }
