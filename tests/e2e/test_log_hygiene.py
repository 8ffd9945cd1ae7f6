"""No secret, bound parameter, message body or address reaches any process's output.

A realistic flow through real `serve` and `worker` processes (JSON logs, debug level)
with distinctive values everywhere a secret or content can go, plus the errors that
tend to leak them: refused credentials, bad input, a forced 500 whose database error
carries the failing row (with a webhook secret in it) and a provider refusing mail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import httpx
import psycopg

from tests.e2e.procs import background, env, wait_http
from tests.peers.fake_telegram import TelegramPeer
from tests.peers.net import free_port
from tests.peers.smtp import PASSWORD, SmtpPeer
from tests.peers.webhooks import WebhookReceiver


def _marker(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def test_no_secret_or_content_in_any_output(
    fresh_database_url: str, smtp: SmtpPeer, receiver: WebhookReceiver
) -> None:
    admin_key = _marker("adminkey")
    inbox_secret = _marker("inboxsecret")
    signing_secret = _marker("signingsecret")
    recipient_secret = _marker("recipientsecret")
    forced_secret = _marker("forcedsecret")
    wrong_key = _marker("wrongkey")
    title, body, meta = _marker("title"), _marker("body"), _marker("meta")
    rid = f"hygiene-{uuid.uuid4().hex[:8]}"
    address = f"{_marker('addr')}@example.org"
    refused_address = f"{_marker('refused')}@example.org"
    smtp.fail_next(refused_address, "550 5.1.1 no such user")
    # the bot token rides in every Bot API path; an Apprise URL holds its credentials
    bot_token = f"987654321:{uuid.uuid4().hex}"
    apprise_path = f"/{_marker('apprisesecret')}"
    receiver.script(apprise_path, [503])
    telegram = TelegramPeer(token=bot_token).start()
    chat = telegram.chat("777000111")
    telegram.script(chat, (429, 0))
    token = hmac.new(inbox_secret.encode(), rid.encode(), hashlib.sha256).hexdigest()
    secrets = [
        admin_key,
        inbox_secret,
        signing_secret,
        recipient_secret,
        forced_secret,
        wrong_key,
        title,
        body,
        meta,
        address,
        refused_address,
        token,
        PASSWORD,
        bot_token,
        bot_token.split(":")[1],
        apprise_path.lstrip("/"),
    ]
    port = free_port()
    environ = env(
        DATABASE_URL=fresh_database_url,
        PORT=str(port),
        POSTBELL_HOST="127.0.0.1",
        POSTBELL_ADMIN_KEY=admin_key,
        POSTBELL_INBOX_SECRET=inbox_secret,
        WEBHOOK_SIGNING_SECRET=signing_secret,
        POSTBELL_WEBHOOK_ALLOW_ADDRESSES=receiver.allow_entry,
        POSTBELL_LOG_FORMAT="json",
        POSTBELL_LOG_LEVEL="debug",
        POSTBELL_POLL_INTERVAL="0.2",
        **smtp.env(),
        **telegram.env(),
    )
    base = f"http://127.0.0.1:{port}"
    with background("serve", environ=environ) as web, background("worker", environ=environ) as work:
        wait_http(f"{base}/health")
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
        ) as api:
            assert (
                api.put(
                    f"/api/recipients/{rid}",
                    json={
                        "email": address,
                        "webhook_url": receiver.url_for(f"/hygiene/{rid}"),
                        "webhook_secret": recipient_secret,
                        "telegram_chat_id": chat,
                        "metadata": {"note": meta},
                    },
                ).status_code
                == 200
            )
            api.put("/api/recipients/refused", json={"email": refused_address})
            ops = api.put(
                "/api/categories/ops",
                json={"apprise_urls": [f"json://127.0.0.1:{receiver.port}{apprise_path}"]},
            )
            assert ops.status_code == 200, ops.text
            sent = api.post(
                "/api/notifications",
                json={
                    "to": [rid, "refused"],
                    "title": title,
                    "message": body,
                    "metadata": {"m": meta},
                    "category": "ops",
                    "channels": ["IN_APP", "EMAIL", "WEBHOOK", "TELEGRAM", "APPRISE"],
                },
            )
            assert sent.status_code == 202, sent.text
            nid = sent.json()["id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                counts = api.get(f"/api/notifications/{nid}").json()["delivery_counts"]
                if counts == {"sent": 7, "dead": 1, "skipped": 2}:
                    break
                time.sleep(0.2)
            assert counts == {"sent": 7, "dead": 1, "skipped": 2}, counts
            # Telegram's 429 and Apprise's 503 were retried, with their error texts
            assert [m.chat_id for m in telegram.sent] == [chat]
            # the recipient's token, in a header and in a stream URL
            assert (
                api.get(
                    f"/api/inbox/{rid}", headers={"Authorization": f"Bearer {token}"}
                ).status_code
                == 200
            )
            with httpx.stream(
                "GET", f"{base}/api/inbox/{rid}/stream", params={"token": token}, timeout=5
            ) as stream:
                assert stream.status_code == 200
            # refused credentials and bad input
            assert (
                api.get(
                    "/api/categories", headers={"Authorization": f"Bearer {wrong_key}"}
                ).status_code
                == 401
            )
            bad = api.post(
                "/api/notifications", json={"to": [rid], "message": body + "\u0000", "title": title}
            )
            assert bad.status_code == 422
            # a forced 500: the database refuses the row, and its error names the row
            with psycopg.connect(fresh_database_url, autocommit=True) as conn:
                conn.execute(
                    "ALTER TABLE postbell.recipients ADD CONSTRAINT hygiene_refuses"
                    f" CHECK (webhook_secret IS DISTINCT FROM '{forced_secret}')"
                )
            forced = api.put(f"/api/recipients/{rid}", json={"webhook_secret": forced_secret})
            assert forced.status_code == 500
            assert forced.json() == {
                "error": "internal_error",
                "detail": "an internal error occurred",
                "field": None,
            }
    telegram.stop()
    output = web.output() + work.output()
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "unhandled_error" for e in events)  # the 500 was logged
    assert "SQLSTATE 23514" in output  # ... with what the operator needs, and no more
    assert any(e.get("event") == "delivered" for e in events)
    leaked = [s for s in secrets if s in output]
    assert leaked == []
