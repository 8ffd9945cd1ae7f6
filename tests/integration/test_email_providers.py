"""EMAIL through SendGrid's v3 API and Amazon SES v2 (AWS Signature V4), against
local endpoints that check keys and signatures."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from postbell.app.api.main import create_app
from tests.conftest import ADMIN, api_client, make_settings, running_worker, wait_until
from tests.peers.sendgrid import Address, SendGridPeer
from tests.peers.ses import SIGNATURE_MISMATCH, SesPeer


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendGridPeer]:
    peer = SendGridPeer()
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture
async def ses() -> AsyncIterator[SesPeer]:
    peer = SesPeer()
    peer.start()
    yield peer
    peer.stop()


async def run_emails(
    database_url: str, env: dict[str, str], addresses: list[str]
) -> dict[str, dict[str, Any]]:
    """Send one email to each address through a worker with ``env``; answer each one's delivery."""
    settings = make_settings(database_url, **env)
    async with api_client(create_app(settings)) as client, running_worker(settings):
        ids = {}
        for n, address in enumerate(addresses):
            await client.put(
                f"/api/recipients/r{n}",
                headers=ADMIN,
                json={"email": address, "name": f"Reader {n}"},
            )
            response = await client.post(
                "/api/notifications",
                headers=ADMIN,
                json={
                    "to": [f"r{n}"],
                    "title": "Hello",
                    "message": "Line one\n\nLine two",
                    "channels": ["EMAIL"],
                },
            )
            ids[address] = response.json()["id"]

        async def final() -> dict[str, dict[str, Any]] | None:
            out = {}
            for address, nid in ids.items():
                (delivery,) = (await client.get(f"/api/notifications/{nid}", headers=ADMIN)).json()[
                    "deliveries"
                ] or [None]
                if delivery is None or delivery["status"] not in ("sent", "dead"):
                    return None
                out[address] = delivery
            return out

        result: dict[str, dict[str, Any]] = await wait_until(final, timeout=20)
        return result


async def test_sendgrid(fresh_database_url: str, sendgrid: SendGridPeer) -> None:
    """SendGrid: 429 and 503 are retried until sent, 400 is a permanent failure; the
    email carries the delivery id as a custom arg and in its Message-ID."""
    sendgrid.script("busy@example.org", 429, 503)
    sendgrid.script("bad@example.org", 400)
    out = await run_emails(
        fresh_database_url,
        sendgrid.env(),
        ["ada@example.org", "busy@example.org", "bad@example.org"],
    )
    assert (out["ada@example.org"]["status"], out["busy@example.org"]["status"]) == ("sent", "sent")
    assert out["busy@example.org"]["attempts"] == 3
    assert (out["bad@example.org"]["status"], out["bad@example.org"]["reason"]) == (
        "dead",
        "permanent_error",
    )
    (mail,) = sendgrid.messages_to("ada@example.org")
    delivery_id = str(out["ada@example.org"]["id"])
    assert mail.text is not None and mail.html is not None
    assert mail.subject == "Hello" and "Line two" in mail.text and "<p>Line one</p>" in mail.html
    assert mail.custom_args == {"postbell_delivery_id": delivery_id}
    assert re.fullmatch(
        rf"<{delivery_id}\.[0-9a-f]{{32}}@postbell\.test>", mail.headers["Message-ID"]
    )
    assert mail.sender == Address(email="notify@postbell.test", name="Postbell")
    assert mail.to == [Address(email="ada@example.org", name="Reader 0")]


async def test_sendgrid_wrong_key_is_retried_not_dead(
    fresh_database_url: str, sendgrid: SendGridPeer
) -> None:
    """A 401 (our key, not the recipient) is retried, not a permanent failure."""
    env = {**sendgrid.env(), "SENDGRID_API_KEY": "SG.wrong", "POSTBELL_RETRY_MAX_ATTEMPTS": "2"}
    out = await run_emails(fresh_database_url, env, ["ada@example.org"])
    delivery = out["ada@example.org"]
    assert (delivery["status"], delivery["reason"], delivery["attempts"]) == (
        "dead",
        "retries_exhausted",
        2,  # retried (a permanent failure would be dead after 1)
    )
    assert "refused our credentials" in delivery["last_error"]


async def test_ses_signed_requests(fresh_database_url: str, ses: SesPeer) -> None:
    """SES: SigV4-signed raw MIME; throttling is retried, MessageRejected is permanent;
    the delivery id is an EmailTag and the Message-ID header."""
    ses.script("throttled@example.org", 429)
    ses.script("rejected@example.org", 400)
    out = await run_emails(
        fresh_database_url,
        {**ses.env(), "SES_CONFIGURATION_SET": "postbell-events"},
        ["ada@example.org", "throttled@example.org", "rejected@example.org"],
    )
    assert out["ada@example.org"]["status"] == "sent"
    assert (out["throttled@example.org"]["status"], out["throttled@example.org"]["attempts"]) == (
        "sent",
        2,
    )
    rejected = out["rejected@example.org"]
    assert (rejected["status"], rejected["reason"]) == ("dead", "permanent_error")
    assert "MessageRejected" in rejected["last_error"]
    (mail,) = ses.messages_to("ada@example.org")
    delivery_id = str(out["ada@example.org"]["id"])
    assert mail.kind == "Raw" and mail.mime is not None
    assert re.fullmatch(rf"<{delivery_id}\.[0-9a-f]{{32}}@postbell\.test>", mail.message_id or "")
    assert mail.tags == {"postbell_delivery_id": delivery_id}
    assert mail.payload["ConfigurationSetName"] == "postbell-events"
    assert mail.mime["To"] == "Reader 0 <ada@example.org>"


async def test_ses_bad_signature_is_refused(fresh_database_url: str, ses: SesPeer) -> None:
    """A request signed with the wrong secret is refused (SignatureDoesNotMatch) and
    nothing is sent."""
    env = {
        **ses.env(),
        "AWS_SECRET_ACCESS_KEY": "not-the-secret",
        "POSTBELL_RETRY_MAX_ATTEMPTS": "1",
    }
    out = await run_emails(fresh_database_url, env, ["ada@example.org"])
    assert "SignatureDoesNotMatch" in out["ada@example.org"]["last_error"]
    assert ses.accepted == []
    assert ses.rejected == [("SignatureDoesNotMatch", SIGNATURE_MISMATCH)]


async def test_http_peer_accepts_only_its_key(sendgrid: SendGridPeer) -> None:
    """The SendGrid peer answers 401 to any other key (so the tests above mean something)."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{sendgrid.url}/v3/mail/send", json={}, headers={"Authorization": "Bearer nope"}
        )
    assert response.status_code == 401
