"""Secrets and message content never reach the logs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import httpx
import pytest
import structlog

from tests.conftest import ADMIN, ADMIN_KEY, unique, wait_until
from tests.peers.smtp import PASSWORD, SmtpPeer


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """Everything logged at debug and above while the test runs, rendered as JSON."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    # The SMTP test server (aiosmtpd, logger "mail.log") is a peer, not postbell.
    handler.addFilter(lambda record: not record.name.startswith("mail.log"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def test_a_delivery_logs_ids_not_content(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer, log_text: io.StringIO
) -> None:
    rid = unique("private")
    secret_title, secret_body = "Title-" + unique("t"), "Body-" + unique("b")
    address = f"{rid}@example.org"
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    response = await api.post(
        "/api/notifications",
        headers=ADMIN,
        json={
            "to": [rid],
            "title": secret_title,
            "message": secret_body,
            "channels": ["IN_APP", "EMAIL"],
        },
    )
    nid = response.json()["id"]

    async def done() -> bool:
        body = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
        return bool(body["delivery_counts"] == {"sent": 2})

    await wait_until(done)
    logged = log_text.getvalue()
    assert '"delivered"' in logged and '"routed"' in logged  # the worker did log its work
    for secret in (secret_title, secret_body, ADMIN_KEY, PASSWORD, address):
        assert secret not in logged, secret
