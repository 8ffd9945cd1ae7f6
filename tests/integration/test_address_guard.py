# ruff: noqa: RUF001  (confusable characters are what these tests are about)
"""The outbound address guard (SSRF), at the API and at connect time.

The session's settings keep the guard on and allow exactly one private address, the
webhook receiver's; everything else on this machine is refused like any private
network would be.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.app.core.addresses import AddressGuard, ip_of, is_public
from tests.conftest import ADMIN, api_client, make_settings, query, unique
from tests.integration.test_delivery_flow import send, settled
from tests.peers.webhooks import WebhookReceiver

#: Every way this machine, a private network or a metadata service can be written.
PRIVATE_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://127。0。0。1/hook",  # ideographic full stops (IDNA/UTS-46 maps them to dots)
    "http://127．0．0．1/hook",  # fullwidth full stops
    "http://１２７.０.０.１/hook",  # fullwidth digits
    "http://①②⑦.0.0.1/hook",  # circled digits
    "http://2130706433/hook",  # decimal
    "http://0x7f000001/hook",  # hex
    "http://0x7f.1/hook",  # hex, short form
    "http://0177.0.0.1/hook",  # octal
    "http://127.1/hook",  # short form
    "http://0/hook",
    "http://0.0.0.0/x",
    "http://[::1]/x",
    "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped IPv6
    "http://[::ffff:7f00:1]/x",
    "http://[64:ff9b::7f00:1]/x",  # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::]/x",  # 6to4 of 127.0.0.1
    "http://[fe80::1]/x",
    "http://[fd00::1]/x",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://api.localhost/hook",
    "http://user:pw@127.0.0.1/x",
    "http://10.1.2.3/x",
    "http://172.16.0.1/x",
    "http://192.168.0.10/x",
    "http://100.64.0.1/x",  # carrier-grade NAT
    "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:169.254.169.254]/latest",
    "http://0251.0376.0251.0376/latest",  # 169.254.169.254 in octal
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_guard_refuses_every_form_of_a_private_address(url: str) -> None:
    assert AddressGuard().refusal(url) is not None, url


@pytest.mark.parametrize(
    "url", ["https://hooks.example.org/x", "http://93.184.215.14/x", "https://[2606:4700::1]/x"]
)
def test_guard_lets_public_targets_through(url: str) -> None:
    assert AddressGuard().refusal(url) is None


def test_resolver_forms_are_read_as_getaddrinfo_reads_them() -> None:
    assert ip_of("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert ip_of("0x7f.1") == ipaddress.ip_address("127.0.0.1")
    assert ip_of("example.org") is None
    assert not is_public("::ffff:10.0.0.1") and not is_public("64:ff9b::a00:1")
    # getaddrinfo answers link-local IPv6 with its zone: the zone does not hide the address
    assert not is_public("fe80::1%eth0") and is_public("2606:4700::1%2")
    assert ip_of("[fe80::1%eth0]") == ipaddress.ip_address("fe80::1")


def test_allowed_entries_are_exact() -> None:
    guard = AddressGuard.from_entries(False, ["127.0.0.1:9000", "[fd00::5]"])
    assert guard.refusal("http://127.0.0.1:9000/x") is None
    assert guard.refusal("http://localhost:9000/x") is not None  # names: checked at connect
    assert guard.refusal("http://127.0.0.1:9001/x") is not None
    assert guard.refusal("http://[fd00::5]:1234/x") is None
    guard.check_connect("127.0.0.1", 9000)
    guard.check_connect("::ffff:127.0.0.1", 9000)
    with pytest.raises(OSError):
        guard.check_connect("127.0.0.1", 9001)


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_the_api_refuses_private_urls_in_every_url_field(database_url: str, url: str) -> None:
    """422 naming the field, and the recipient is not written."""
    async with api_client(create_app(make_settings(database_url))) as client:
        for field in ("webhook_url", "slack_webhook_url", "discord_webhook_url"):
            rid = unique()
            response = await client.put(f"/api/recipients/{rid}", headers=ADMIN, json={field: url})
            assert (response.status_code, response.json()["field"]) == (422, field), response.text
            assert (await client.get(f"/api/recipients/{rid}", headers=ADMIN)).status_code == 404


@pytest.fixture
def other_receiver() -> WebhookReceiver:
    """A second receiver on this machine that the guard does not allow."""
    peer = WebhookReceiver().start()
    yield peer  # type: ignore[misc]
    peer.stop()


async def test_connect_time_guard_refuses_what_was_written_past_the_api(
    api: httpx.AsyncClient,
    pool: db.Pool,
    worker: None,
    receiver: WebhookReceiver,
    other_receiver: WebhookReceiver,
) -> None:
    """URLs stored straight into the table (an IP literal, a name resolving to loopback,
    a Unicode form) reach no unallowed address: each is dead/private_address, nothing
    arrives, and the allowed delivery in the same batch is sent."""
    port = other_receiver.port
    urls = {
        "literal": f"http://127.0.0.1:{port}/x",
        "name": f"http://localhost:{port}/x",
        "unicode": f"http://127。0。0。1:{port}/x",
        "mapped": f"http://[::ffff:127.0.0.1]:{port}/x",
    }
    ok = unique("guard-ok")
    ids = {name: unique(f"guard-{name}") for name in urls}
    await api.put(
        f"/api/recipients/{ok}", headers=ADMIN, json={"webhook_url": receiver.url_for(f"/{ok}")}
    )
    for name, url in urls.items():
        await query(
            pool,
            "INSERT INTO recipients (external_id, webhook_url) VALUES (%s, %s)",
            (ids[name], url),
        )
    nid = await send(api, to=[ok, *ids.values()], message="guarded", channels=["WEBHOOK"])
    body = await settled(api, nid, {"sent": 1, "dead": len(urls)})
    reasons = {d["recipient"]: (d["status"], d["reason"]) for d in body["deliveries"]}
    assert reasons == {
        ok: ("sent", None),
        **{rid: ("dead", "private_address") for rid in ids.values()},
    }
    assert other_receiver.received == []
    assert len(receiver.at(f"/{ok}")) == 1
