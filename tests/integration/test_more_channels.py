"""WHATSAPP, TELEGRAM, TEAMS, APPRISE and SMS through SNS, end to end: the API, routing,
a real worker, each provider's wire-level peer, and what the database records
(retries, dead letters, addresses marked inactive, skips at routing)."""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest

from postbell.app.core import db
from tests.conftest import ADMIN, api_client, make_settings, query, running_worker, unique
from tests.integration.test_callback_replays import twilio_request, twilio_status
from tests.integration.test_delivery_flow import send, settled
from tests.peers.fake_teams import CARD_TYPE, TeamsPeer
from tests.peers.fake_telegram import TOKEN, TelegramPeer
from tests.peers.fake_twilio import TEMPLATES, WHATSAPP_FROM, TwilioPeer
from tests.peers.sns_sms import SnsSmsPeer
from tests.peers.webhooks import WebhookReceiver


def by_channel(notification: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["channel"]: d for d in notification["deliveries"]}


def number(prefix: str = "+55119") -> str:
    return f"{prefix}{random.randint(1_000_000, 9_999_999)}"


async def recipient(api: httpx.AsyncClient, rid: str, **fields: Any) -> dict[str, Any]:
    response = await api.put(f"/api/recipients/{rid}", headers=ADMIN, json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def category(api: httpx.AsyncClient, key: str, **fields: Any) -> dict[str, Any]:
    response = await api.put(f"/api/categories/{key}", headers=ADMIN, json=fields)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- WHATSAPP ------------------------------------------------------------------------------


async def test_whatsapp_free_text_inside_the_session_window(
    api: httpx.AsyncClient, worker: None, twilio: TwilioPeer
) -> None:
    """Free text goes from the WhatsApp sender to whatsapp:<number>, with the status
    callback carrying the delivery id."""
    rid, phone = unique("wa"), number()
    twilio.open_session(phone)
    await recipient(api, rid, whatsapp=phone)
    nid = await send(
        api,
        to=[rid],
        title="Tonight",
        message="Doors at 7",
        channels=["WHATSAPP"],
        action_url="https://example.org/e/1",
    )
    delivery = by_channel(await settled(api, nid, {"sent": 1}))["WHATSAPP"]
    (message,) = twilio.to(f"whatsapp:{phone}")
    assert {k: message[k] for k in ("To", "From", "Body", "StatusCallback")} == {
        "To": f"whatsapp:{phone}",
        "From": f"whatsapp:{WHATSAPP_FROM}",
        "Body": "Tonight\nDoors at 7\nhttps://example.org/e/1",
        "StatusCallback": f"https://postbell.example.org/api/callbacks/twilio?d={delivery['id']}",
    }
    assert delivery["attempts"] == 1


async def test_whatsapp_templates_from_the_category_or_the_notification(
    api: httpx.AsyncClient, worker: None, twilio: TwilioPeer
) -> None:
    """A category's content SID sends the template with title/body (and action URL) as
    variables 1, 2 (3); a notification's metadata names its own SID and variables.
    Both go outside the session window, where free text would fail."""
    twilio.enforce_window = True
    try:
        two, named = sorted(TEMPLATES)[0], "HX" + "ab" * 16
        key = unique("wa-cat")
        saved = await category(api, key, whatsapp_content_sid=two)
        assert saved["whatsapp_content_sid"] == two
        rid, phone = unique("wa-tpl"), number()
        await recipient(api, rid, whatsapp=phone)
        first = await send(
            api,
            to=[rid],
            title="Reminder",
            message="Meetup at 7",
            channels=["WHATSAPP"],
            category=key,
        )
        await settled(api, first, {"sent": 1})
        second = await send(
            api,
            to=[rid],
            message="ignored by the template",
            channels=["WHATSAPP"],
            category=key,
            metadata={"whatsapp_content_sid": named, "whatsapp_variables": {"name": "Ana"}},
        )
        await settled(api, second, {"sent": 1})
        sent = twilio.to(f"whatsapp:{phone}")
        assert [(m["ContentSid"], json.loads(m["ContentVariables"])) for m in sent] == [
            (two, {"1": "Reminder", "2": "Meetup at 7"}),
            (named, {"name": "Ana"}),
        ]
        assert all("Body" not in m for m in sent)
        assert [f for f in twilio.failed if f["To"] == f"whatsapp:{phone}"] == []
    finally:
        twilio.enforce_window = False


async def test_whatsapp_errors_are_classified_and_opt_out_marks_the_number(
    api: httpx.AsyncClient, worker: None, twilio: TwilioPeer
) -> None:
    """63016 (free text outside the window) is dead with reason template_required and
    a message saying what to do; 63003 (not on WhatsApp) invalid_address; 63018 (rate)
    retried; 21610 dead, the number marked inactive, and the next message skipped."""
    cases = {"window": [63016], "absent": [63003], "busy": [63018], "stop": [21610]}
    ids: dict[str, tuple[str, str]] = {}
    for name, codes in cases.items():
        rid, phone = unique(f"wa-{name}"), number()
        await recipient(api, rid, whatsapp=phone)
        twilio.script(f"whatsapp:{phone}", codes)
        ids[name] = (rid, await send(api, to=[rid], message="x", channels=["WHATSAPP"]))
    window = by_channel(await settled(api, ids["window"][1], {"dead": 1}))["WHATSAPP"]
    assert window["reason"] == "template_required"
    assert "24-hour session window" in window["last_error"] and "63016" in window["last_error"]
    absent = by_channel(await settled(api, ids["absent"][1], {"dead": 1}))["WHATSAPP"]
    assert absent["reason"] == "invalid_address"
    busy = by_channel(await settled(api, ids["busy"][1], {"sent": 1}))["WHATSAPP"]
    assert busy["attempts"] == 2
    stop_rid, stop_nid = ids["stop"]
    stopped = by_channel(await settled(api, stop_nid, {"dead": 1}))["WHATSAPP"]
    assert stopped["reason"] == "unsubscribed"
    got = (await api.get(f"/api/recipients/{stop_rid}", headers=ADMIN)).json()
    assert got["whatsapp_inactive_at"] is not None and got["phone_inactive_at"] is None
    again = await send(api, to=[stop_rid], message="y", channels=["WHATSAPP"])
    skipped = by_channel(await settled(api, again, {"skipped": 1}))["WHATSAPP"]
    assert skipped["reason"] == "address_inactive"
    # a new number forgets that the old one opted out
    changed = await recipient(api, stop_rid, whatsapp=number())
    assert changed["whatsapp_inactive_at"] is None


async def test_whatsapp_status_callbacks(
    api: httpx.AsyncClient, worker: None, twilio: TwilioPeer
) -> None:
    """Twilio's callbacks for whatsapp: addresses move WHATSAPP deliveries: 63016
    reported after the accept is undelivered with its code; 21610 marks the WhatsApp
    number inactive (not the phone)."""
    twilio.enforce_window = True
    try:
        rows = {}
        for name in ("late", "stop"):
            rid, phone = unique(f"wa-cb-{name}"), number()
            await recipient(api, rid, whatsapp=phone, phone=number("+1415"))
            nid = await send(api, to=[rid], message="free text", channels=["WHATSAPP"])
            (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
            rows[name] = (rid, phone, nid, delivery["id"])
        # the peer accepted and then failed the free text outside the window
        (failed,) = [f for f in twilio.failed if f["To"] == f"whatsapp:{rows['late'][1]}"]
        assert failed["ErrorCode"] == "63016"
        for name, code in (("late", "63016"), ("stop", "21610")):
            rid, phone, nid, did = rows[name]
            params = twilio_status(
                "SM" + str(did).zfill(32), "undelivered", f"whatsapp:{phone}", code
            )
            params["From"] = f"whatsapp:{WHATSAPP_FROM}"
            response = await api.post(**twilio_request(did, params))
            assert (response.status_code, response.json()) == (200, {"status": "processed"})
        late = by_channel(await settled(api, rows["late"][2], {"undelivered": 1}))["WHATSAPP"]
        assert late["reason"] == "twilio:undelivered:63016"
        got = (await api.get(f"/api/recipients/{rows['stop'][0]}", headers=ADMIN)).json()
        assert got["whatsapp_inactive_at"] is not None and got["phone_inactive_at"] is None
    finally:
        twilio.enforce_window = False


async def test_whatsapp_fields_are_checked(api: httpx.AsyncClient) -> None:
    """A WhatsApp number must be E.164; a template SID and its variables have a shape."""
    bad = await api.put(f"/api/recipients/{unique()}", headers=ADMIN, json={"whatsapp": "0800"})
    assert (bad.status_code, bad.json()["field"]) == (422, "whatsapp")
    for metadata, field in (
        ({"whatsapp_content_sid": "HXnope"}, "metadata.whatsapp_content_sid"),
        ({"whatsapp_variables": {"1": 2}}, "metadata.whatsapp_variables"),
    ):
        response = await api.post(
            "/api/notifications",
            headers=ADMIN,
            json={"to": ["x"], "message": "m", "channels": ["WHATSAPP"], "metadata": metadata},
        )
        assert (response.status_code, response.json()["field"]) == (422, field)
    response = await api.put(
        f"/api/categories/{unique('c')}", headers=ADMIN, json={"whatsapp_content_sid": "SM1"}
    )
    assert response.status_code == 422 and response.json()["field"] == "whatsapp_content_sid"


# -- TELEGRAM ------------------------------------------------------------------------------


async def test_telegram_send_is_escaped_html(
    api: httpx.AsyncClient, worker: None, telegram: TelegramPeer
) -> None:
    """sendMessage in parse mode HTML with every part escaped: markup in a notification
    reaches the member as the characters written."""
    rid, chat = unique("tg"), telegram.chat("-1001234567890")
    await recipient(api, rid, telegram_chat_id=chat)
    nid = await send(
        api,
        to=[rid],
        title="<Meetup> & more",
        message="Bring <b>snacks</b> & drinks",
        channels=["TELEGRAM"],
        action_url='https://example.org/e?a=1&b="2"',
    )
    delivery = by_channel(await settled(api, nid, {"sent": 1}))["TELEGRAM"]
    (message,) = telegram.to(chat)
    assert message.parse_mode == "HTML"
    assert message.text == (
        "<b>&lt;Meetup&gt; &amp; more</b>\nBring &lt;b&gt;snacks&lt;/b&gt; &amp; drinks\n"
        '<a href="https://example.org/e?a=1&amp;b=&quot;2&quot;">Open</a>'
    )
    assert message.visible == "<Meetup> & more\nBring <b>snacks</b> & drinks\nOpen"
    assert delivery["attempts"] == 1


async def test_telegram_retry_after_and_blocked_bot(
    api: httpx.AsyncClient, worker: None, telegram: TelegramPeer
) -> None:
    """429 is retried after parameters.retry_after and then sent; "bot was blocked by
    the user" (403) is dead, marks the chat inactive, and later deliveries to it are
    skipped at routing until the chat id changes. The token is in no error text."""
    slow, gone = telegram.chat("5550001"), telegram.chat("5550002")
    telegram.script(slow, (429, 1))
    telegram.block(gone)
    rid_slow, rid_gone = unique("tg-slow"), unique("tg-gone")
    await recipient(api, rid_slow, telegram_chat_id=slow)
    await recipient(api, rid_gone, telegram_chat_id=gone)
    nid = await send(api, to=[rid_slow, rid_gone], message="hello", channels=["TELEGRAM"])
    body = await settled(api, nid, {"sent": 1, "dead": 1})
    rows = {d["recipient"]: d for d in body["deliveries"]}
    assert (rows[rid_slow]["attempts"], rows[rid_slow]["status"]) == (2, "sent")
    assert "retry after 1" in rows[rid_slow]["last_error"]
    assert (rows[rid_gone]["reason"], rows[rid_gone]["last_error"]) == (
        "unsubscribed",
        "Telegram answered HTTP 403: Forbidden: bot was blocked by the user",
    )
    assert all(TOKEN not in (d["last_error"] or "") for d in body["deliveries"])
    got = (await api.get(f"/api/recipients/{rid_gone}", headers=ADMIN)).json()
    assert got["telegram_inactive_at"] is not None
    again = await send(api, to=[rid_gone], message="again", channels=["TELEGRAM"])
    assert by_channel(await settled(api, again, {"skipped": 1}))["TELEGRAM"]["reason"] == (
        "address_inactive"
    )
    assert len(telegram.to(gone)) == 0


async def test_telegram_one_message_per_chat_per_batch(telegram: TelegramPeer) -> None:
    """Two deliveries to one chat in a batch: the first goes, the second waits a second
    (provider_pacing), not attempted; other chats are not held back."""
    import uuid

    from postbell.workers.channels.base import Delivery, Recipient
    from postbell.workers.channels.registry import REGISTRY

    settings = make_settings("postgresql://x@127.0.0.1/unused", **telegram.env())
    channel = REGISTRY["TELEGRAM"].from_settings(settings)
    assert channel is not None
    chat, other = telegram.chat("4440001"), telegram.chat("4440002")
    batch = [
        Delivery(
            id=n,
            attempts=0,
            notification_id=uuid.uuid4(),
            recipient=Recipient(external_id=f"r{n}", telegram_chat_id=c),
            body=f"m{n}",
        )
        for n, c in ((1, chat), (2, chat), (3, other))
    ]
    try:
        outcomes = await channel.send(batch)
    finally:
        await channel.close()
    assert [(o.kind, o.reason) for o in outcomes] == [
        ("sent", None),
        ("wait", "provider_pacing"),
        ("sent", None),
    ]
    assert [m.visible for m in telegram.to(chat)] == ["m1"]


async def test_telegram_chat_id_is_checked(api: httpx.AsyncClient) -> None:
    """A chat id is a number (negative for groups) or @channelname."""
    for good in ("123456789", "-1001234567890", "@postbell_news"):
        assert (
            await api.put(
                f"/api/recipients/{unique()}", headers=ADMIN, json={"telegram_chat_id": good}
            )
        ).status_code == 200
    for bad in ("12ab", "@x", "-0", "1" * 25):
        response = await api.put(
            f"/api/recipients/{unique()}", headers=ADMIN, json={"telegram_chat_id": bad}
        )
        assert (response.status_code, response.json()["field"]) == (422, "telegram_chat_id")


# -- TEAMS ---------------------------------------------------------------------------------


async def test_teams_adaptive_card_to_the_recipient_or_the_category(
    api: httpx.AsyncClient, worker: None, teams: TeamsPeer
) -> None:
    """The recipient's URL gets the card; one without a URL of their own gets it at the
    category's; without either, routing skips no_address. A 200 that reports HTTP 429
    inside (connectors) is retried."""
    own, team = f"/teams/{unique()}", f"/teams/{unique()}"
    teams.script(own, "inner-429")
    key = unique("teams-cat")
    saved = await category(api, key, teams_webhook_url=teams.url_for(team))
    assert saved["teams_webhook_url"] == teams.url_for(team)
    mine, theirs, nowhere = unique("tm-own"), unique("tm-team"), unique("tm-none")
    await recipient(api, mine, teams_webhook_url=teams.url_for(own))
    await recipient(api, theirs)
    await recipient(api, nowhere)
    nid = await send(
        api,
        to=[mine, theirs],
        title="Standup",
        message="In 5 minutes",
        channels=["TEAMS"],
        category=key,
        action_url="https://example.org/standup",
    )
    body = await settled(api, nid, {"sent": 2})
    rows = {d["recipient"]: d for d in body["deliveries"]}
    assert rows[mine]["attempts"] == 2 and "HTTP 429" in rows[mine]["last_error"]
    expected = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": "Standup",
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
            },
            {"type": "TextBlock", "text": "In 5 minutes", "wrap": True},
        ],
        "actions": [
            {"type": "Action.OpenUrl", "title": "Open", "url": "https://example.org/standup"}
        ],
    }
    assert teams.cards_at(own) == [expected]
    assert teams.cards_at(team) == [expected]
    assert teams.refused == []
    (request,) = [r for r in teams.requests_to(team)]
    assert request.json()["attachments"][0]["contentType"] == CARD_TYPE
    none = await send(api, to=[nowhere], message="x", channels=["TEAMS"])
    assert by_channel(await settled(api, none, {"skipped": 1}))["TEAMS"]["reason"] == "no_address"


async def test_teams_urls_pass_the_address_guard(api: httpx.AsyncClient) -> None:
    """A Teams URL on a private address is refused at the API, on a recipient and on
    a category alike (the SSRF guard)."""
    response = await api.put(
        f"/api/recipients/{unique()}",
        headers=ADMIN,
        json={"teams_webhook_url": "http://10.0.0.7/hook"},
    )
    assert (response.status_code, response.json()["field"]) == (422, "teams_webhook_url")
    response = await api.put(
        f"/api/categories/{unique('c')}",
        headers=ADMIN,
        json={"teams_webhook_url": "http://169.254.169.254/latest"},
    )
    assert (response.status_code, response.json()["field"]) == (422, "teams_webhook_url")


# -- APPRISE -------------------------------------------------------------------------------


async def test_apprise_urls_are_admin_only_write_only_and_checked(
    api: httpx.AsyncClient, pool: db.Pool, receiver: WebhookReceiver
) -> None:
    """Only an admin key sets a category's Apprise URLs; answers show their scheme only;
    a PUT that leaves them out keeps them; null clears them; a URL Apprise cannot use
    is 422 naming its index, without repeating it."""
    key = unique("ops")
    secret = f"json://127.0.0.1:{receiver.port}/secret-{unique()}"
    saved = await category(api, key, apprise_urls=[secret, "ntfy://ntfy.example.org/alerts"])
    assert saved["apprise_urls"] == ["json://***", "ntfy://***"]
    listed = (await api.get("/api/categories", headers=ADMIN)).json()["items"]
    assert secret not in json.dumps(listed)
    kept = await category(api, key, name="Ops alerts")
    assert kept["apprise_urls"] == ["json://***", "ntfy://***"]
    rows = await query(pool, "SELECT apprise_urls FROM postbell.categories WHERE key = %s", [key])
    assert rows[0]["apprise_urls"] == [secret, "ntfy://ntfy.example.org/alerts"]
    bad = await api.put(
        f"/api/categories/{key}",
        headers=ADMIN,
        json={"apprise_urls": ["ntfy://ok.example.org/t", "nosuch://user:hunter2@host"]},
    )
    assert (bad.status_code, bad.json()["field"]) == (422, "apprise_urls[1]")
    assert "hunter2" not in bad.text
    cleared = await category(api, key, apprise_urls=None)
    assert cleared["apprise_urls"] == []


async def test_apprise_to_the_category_destinations(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, receiver: WebhookReceiver
) -> None:
    """An APPRISE delivery goes to every URL of its category (Apprise's json:// service
    here), retried after a 503 and sent; a notification without such a category is
    skipped no_address at routing; a 404 is dead at once."""
    first, second, broken = f"/apprise/{unique()}", f"/apprise/{unique()}", f"/apprise/{unique()}"
    receiver.script(second, [503])
    receiver.script(broken, [404])
    key, dead_key = unique("ops"), unique("ops-dead")
    await category(
        api,
        key,
        apprise_urls=[
            f"json://127.0.0.1:{receiver.port}{first}",
            f"json://127.0.0.1:{receiver.port}{second}",
        ],
    )
    await category(api, dead_key, apprise_urls=[f"json://127.0.0.1:{receiver.port}{broken}"])
    rid = unique("ops-desk")
    nid = await send(
        api,
        to=[rid],
        title="Disk 91%",
        message="db-1 is filling up",
        channels=["APPRISE"],
        category=key,
        priority="high",
        action_url="https://example.org/runbook",
    )
    delivery = by_channel(await settled(api, nid, {"sent": 1}))["APPRISE"]
    assert delivery["attempts"] == 2
    assert delivery["last_error"].startswith("Apprise: 1 of 2 destinations failed: #2 (json://***)")
    assert str(receiver.port) not in delivery["last_error"]
    payload = {
        "version": "1.0",
        "title": "Disk 91%",
        "message": "db-1 is filling up\nhttps://example.org/runbook",
        "attachments": [],
        "type": "warning",
    }
    assert receiver.accepted_json(first) == [payload, payload]  # the retry sends to all
    assert receiver.accepted_json(second) == [payload]
    dead = await send(api, to=[rid], message="x", channels=["APPRISE"], category=dead_key)
    died = by_channel(await settled(api, dead, {"dead": 1}))["APPRISE"]
    assert (died["reason"], died["attempts"]) == ("permanent_error", 1)
    nowhere = await send(api, to=[rid], message="x", channels=["APPRISE"])
    assert by_channel(await settled(api, nowhere, {"skipped": 1}))["APPRISE"]["reason"] == (
        "no_address"
    )


async def test_apprise_category_needs_an_admin_key(api: httpx.AsyncClient, pool: db.Pool) -> None:
    """A send key cannot set (or see) a category's Apprise URLs."""
    from postbell.app.core import keys

    async with pool.connection() as conn:
        _, key = await keys.create_key(conn, "send", "apprise-test")
    headers = {"Authorization": f"Bearer {key}"}
    response = await api.put(
        f"/api/categories/{unique('c')}",
        headers=headers,
        json={"apprise_urls": ["json://example.org/x"]},
    )
    assert response.status_code == 403


# -- SMS through SNS -----------------------------------------------------------------------


@pytest.fixture
async def sns_api(fresh_database_url: str, sns_sms: SnsSmsPeer) -> Any:
    settings = make_settings(fresh_database_url, **sns_sms.env(), SNS_SENDER_ID="Postbell")
    from postbell.app.api.main import create_app

    async with api_client(create_app(settings)) as client, running_worker(settings):
        yield client


async def test_sms_through_sns(sns_api: httpx.AsyncClient, sns_sms: SnsSmsPeer) -> None:
    """Publish to the phone, SigV4-signed (the peer verifies it independently); SMS type
    by priority unless the category names one; the sender ID except to +1 numbers;
    Throttled retried; OptedOut dead and the phone marked inactive."""
    api = sns_api
    uk, us, busy, stop = number("+4477009"), number("+1415"), number("+4477008"), number("+4477007")
    before = len(sns_sms.rejected)  # the peer serves the whole session
    sns_sms.script(busy, "Throttled")
    sns_sms.opt_out(stop)
    for rid, phone in (("uk", uk), ("us", us), ("busy", busy), ("stop", stop)):
        await recipient(api, rid, phone=phone)
    await category(api, "promo", sms_type="promotional")
    urgent = await send(
        api,
        to=["uk", "us"],
        message="Venue changed",
        channels=["SMS"],
        priority="urgent",
        title="Tonight",
    )
    await settled(api, urgent, {"sent": 2})
    newsletter = await send(
        api, to=["uk"], message="Our news", channels=["SMS"], priority="high", category="promo"
    )
    await settled(api, newsletter, {"sent": 1})
    (first, second) = sns_sms.to(uk)
    assert (first.message, first.attributes) == (
        "Tonight\nVenue changed",
        {"AWS.SNS.SMS.SMSType": "Transactional", "AWS.SNS.SMS.SenderID": "Postbell"},
    )
    assert second.attributes == {
        "AWS.SNS.SMS.SMSType": "Promotional",
        "AWS.SNS.SMS.SenderID": "Postbell",
    }
    (american,) = sns_sms.to(us)
    assert american.attributes == {"AWS.SNS.SMS.SMSType": "Transactional"}
    nid = await send(api, to=["busy", "stop"], message="x", channels=["SMS"])
    body = await settled(api, nid, {"sent": 1, "dead": 1})
    rows = {d["recipient"]: d for d in body["deliveries"]}
    assert rows["busy"]["attempts"] == 2 and "Throttled" in rows["busy"]["last_error"]
    assert (rows["stop"]["reason"], rows["stop"]["last_error"]) == (
        "unsubscribed",
        "SNS 400 OptedOut: Phone number is opted out",
    )
    got = (await api.get("/api/recipients/stop", headers=ADMIN)).json()
    assert got["phone_inactive_at"] is not None
    assert sns_sms.rejected[before:] == [
        ("Throttled", "Rate exceeded"),
        ("OptedOut", "Phone number is opted out"),
    ]


async def test_sms_provider_defaults() -> None:
    """Twilio when its settings are there; SNS only when named, so AWS credentials kept
    for SES never start sending SMS; naming a provider without its settings stops."""
    from postbell.app.core.settings import ConfigError

    aws = {"AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s"}
    twilio = {
        "TWILIO_ACCOUNT_SID": "AC1",
        "TWILIO_AUTH_TOKEN": "t",
        "TWILIO_FROM_NUMBER": "+15005550006",
    }
    db_url = "postgresql://x@127.0.0.1/unused"
    assert make_settings(db_url, **aws).sms_provider is None
    assert make_settings(db_url, **aws, **twilio).sms_provider == "twilio"
    assert make_settings(db_url, **aws, POSTBELL_SMS_PROVIDER="sns").sms_provider == "sns"
    with pytest.raises(ConfigError, match="POSTBELL_SMS_PROVIDER=sns needs AWS_REGION"):
        make_settings(db_url, POSTBELL_SMS_PROVIDER="sns")
    only_whatsapp = {
        **twilio,
        "TWILIO_FROM_NUMBER": "",
        "TWILIO_WHATSAPP_FROM": "whatsapp:+14155238886",
    }
    settings = make_settings(db_url, **only_whatsapp)
    assert (settings.sms_provider, settings.twilio and settings.twilio.whatsapp_from) == (
        None,
        "+14155238886",
    )


async def test_new_channels_in_the_dead_letter_filters_and_preferences(
    api: httpx.AsyncClient, pool: db.Pool
) -> None:
    """The new names are channels everywhere a channel is named: preferences, dead
    letter filters, fallbacks."""
    rid = unique("prefs")
    await recipient(api, rid)
    response = await api.put(
        f"/api/recipients/{rid}/preferences",
        headers=ADMIN,
        json={"channels": {"TELEGRAM": False, "WHATSAPP": True, "TEAMS": True, "APPRISE": False}},
    )
    assert response.status_code == 200, response.text
    for channel in ("WHATSAPP", "TELEGRAM", "TEAMS", "APPRISE"):
        listed = await api.get("/api/dead-letters", headers=ADMIN, params={"channel": channel})
        assert listed.status_code == 200, listed.text
    nid = await send(
        api, to=[rid], message="m", channels=["TELEGRAM"], fallback={"TELEGRAM": "IN_APP"}
    )
    body = await settled(api, nid, {"skipped": 1})  # an opt-out takes no fallback
    assert by_channel(body)["TELEGRAM"]["reason"] == "opted_out"
