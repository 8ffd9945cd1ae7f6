"""The spine end to end, in one process: API -> outbox -> router -> IN_APP + SMTP email.

A real worker runs in the test's event loop; email goes through a real SMTP server
with STARTTLS on a self-signed certificate and AUTH.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from postbell.app.core import db
from tests.conftest import ADMIN, unique, wait_until
from tests.peers.smtp import USERNAME, SmtpPeer


async def send(api: httpx.AsyncClient, **body: Any) -> str:
    response = await api.post("/api/notifications", headers=ADMIN, json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def settled(
    api: httpx.AsyncClient, notification_id: str, expected: dict[str, int]
) -> dict[str, Any]:
    """Wait until the notification's delivery counts are ``expected``; answer the notification."""

    async def check() -> dict[str, Any] | None:
        body = (await api.get(f"/api/notifications/{notification_id}", headers=ADMIN)).json()
        return body if body["delivery_counts"] == expected else None

    result: dict[str, Any] = await wait_until(check)
    return result


async def test_in_app_and_email(api: httpx.AsyncClient, worker: None, smtp: SmtpPeer) -> None:
    rid = unique("ada")
    address = f"{rid}@example.org"
    await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"email": address, "name": "Ada Lovelace"}
    )
    nid = await send(
        api,
        to=[rid],
        title="Event announced",
        message="Meet-up on Friday.\n\nBring snacks.",
        channels=["IN_APP", "EMAIL"],
        action_url="https://example.org/events/1",
    )
    notification = await settled(api, nid, {"sent": 2})
    assert notification["status"] == "routed"
    by_channel = {d["channel"]: d for d in notification["deliveries"]}
    assert {
        k: (d["status"], d["attempts"], d["last_error"], d["recipient"])
        for k, d in by_channel.items()
    } == {
        "IN_APP": ("sent", 0, None, rid),
        "EMAIL": ("sent", 1, None, rid),
    }

    (mail,) = smtp.to(address)
    assert (mail.mail_from, mail.rcpt_tos, mail.authenticated_as, mail.tls) == (
        "notify@postbell.test",
        [address],
        USERNAME,
        True,
    )
    message = mail.message
    assert message["Subject"] == "Event announced"
    assert message["To"] == f"Ada Lovelace <{address}>"
    assert message["From"] == "Postbell <notify@postbell.test>"
    assert (
        message["Message-ID"] == f"<{by_channel['EMAIL']['id']}.{uuid.UUID(nid).hex}@postbell.test>"
    )
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert "Meet-up on Friday." in text and "https://example.org/events/1" in text
    assert "<h1>Event announced</h1>" in html and 'href="https://example.org/events/1"' in html

    inbox = (await api.get(f"/api/inbox/{rid}", headers=ADMIN)).json()
    assert (inbox["unread_count"], inbox["unseen_count"], len(inbox["items"])) == (1, 1, 1)
    item = inbox["items"][0]
    assert (item["id"], item["notification_id"], item["title"]) == (
        by_channel["IN_APP"]["id"],
        nid,
        "Event announced",
    )

    marked = (
        await api.post(f"/api/inbox/{rid}/read", headers=ADMIN, json={"ids": [item["id"]]})
    ).json()
    assert marked == {"updated": 1, "unread_count": 0, "unseen_count": 0}
    inbox = (await api.get(f"/api/inbox/{rid}", headers=ADMIN)).json()
    assert inbox["items"][0]["read_at"] is not None


async def test_unknown_recipient_gets_an_inbox_and_no_email(
    api: httpx.AsyncClient, worker: None
) -> None:
    """A recipient the host app never registered is created bare: inbox yes, email no_address."""
    rid = unique("newcomer")
    nid = await send(api, to=[rid], message="Welcome!", channels=["IN_APP", "EMAIL"])
    notification = await settled(api, nid, {"sent": 1, "skipped": 1})
    reasons = {d["channel"]: (d["status"], d["reason"]) for d in notification["deliveries"]}
    assert reasons == {"IN_APP": ("sent", None), "EMAIL": ("skipped", "no_address")}
    assert (await api.get(f"/api/recipients/{rid}", headers=ADMIN)).status_code == 200


async def test_transient_smtp_failure_is_retried(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    rid = unique("retry")
    address = f"{rid}@example.org"
    smtp.script[address] = ["451 4.3.0 Mailbox busy, try later"]
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    nid = await send(api, to=[rid], message="Second time lucky", channels=["EMAIL"])
    notification = await settled(api, nid, {"sent": 1})
    (delivery,) = notification["deliveries"]
    assert delivery["attempts"] == 2
    assert "451" in delivery["last_error"]
    assert len(smtp.to(address)) == 1


async def test_hard_bounce_is_dead_and_marks_the_address_inactive(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, smtp: SmtpPeer
) -> None:
    rid = unique("bounce")
    address = f"{rid}@example.org"
    smtp.script[address] = ["550 5.1.1 No such user"]
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    nid = await send(api, to=[rid], message="Hello?", channels=["EMAIL"])
    (delivery,) = (await settled(api, nid, {"dead": 1}))["deliveries"]
    assert (delivery["reason"], delivery["attempts"]) == ("invalid_address", 1)
    assert delivery["last_error"].startswith("SMTP 550")
    recipient = (await api.get(f"/api/recipients/{rid}", headers=ADMIN)).json()
    assert recipient["email_inactive_at"] is not None

    again = await send(api, to=[rid], message="Still there?", channels=["EMAIL"])
    (skipped,) = (await settled(api, again, {"skipped": 1}))["deliveries"]
    assert skipped["reason"] == "address_inactive"

    changed = await api.put(
        f"/api/recipients/{rid}", headers=ADMIN, json={"email": f"new-{address}"}
    )
    assert changed.json()["email_inactive_at"] is None
    third = await send(api, to=[rid], message="New address", channels=["EMAIL"])
    await settled(api, third, {"sent": 1})
    assert len(smtp.to(f"new-{address}")) == 1
