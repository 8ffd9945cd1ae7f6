"""The dead-letter queue: dead deliveries listed, filtered and requeued (API and CLI)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import ADMIN, unique
from tests.integration.test_delivery_flow import send, settled
from tests.peers.smtp import SmtpPeer


async def make_dead(
    api: httpx.AsyncClient, smtp: SmtpPeer, *, code: str = "550 5.1.1 No such user"
) -> tuple[str, str, int]:
    rid = unique("dl")
    address = f"{rid}@example.org"
    smtp.script[address] = [code]
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": address})
    nid = await send(api, to=[rid], message="Dead on arrival", channels=["EMAIL"])
    (delivery,) = (await settled(api, nid, {"dead": 1}))["deliveries"]
    return rid, nid, int(delivery["id"])


async def test_list_and_retry_one(api: httpx.AsyncClient, worker: None, smtp: SmtpPeer) -> None:
    rid, nid, delivery_id = await make_dead(api, smtp, code="554 5.7.1 Message refused")
    page = (
        await api.get("/api/dead-letters", headers=ADMIN, params={"channel": "EMAIL", "limit": 500})
    ).json()
    (item,) = [i for i in page["items"] if i["id"] == delivery_id]
    assert {
        k: item[k] for k in ("notification_id", "channel", "recipient", "reason", "attempts")
    } == {
        "notification_id": nid,
        "channel": "EMAIL",
        "recipient": rid,
        "reason": "permanent_error",
        "attempts": 1,
    }
    assert item["last_error"].startswith("SMTP 554")
    assert page["total"] >= 1

    # The relay accepts it now: requeue and it is sent.
    retried = await api.post(f"/api/dead-letters/{delivery_id}/retry", headers=ADMIN)
    assert (retried.status_code, retried.json()) == (200, {"retried": 1})
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    assert delivery["attempts"] == 1
    again = await api.post(f"/api/dead-letters/{delivery_id}/retry", headers=ADMIN)
    assert again.status_code == 404


async def test_bulk_retry_by_ids_and_filters(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    made = [await make_dead(api, smtp, code="554 5.7.1 Refused") for _ in range(3)]
    ids = [d for _, _, d in made]
    response = await api.post("/api/dead-letters/retry", headers=ADMIN, json={"ids": ids[:2]})
    assert response.json() == {"retried": 2}
    for _, nid, _ in made[:2]:
        await settled(api, nid, {"sent": 1})
    by_filter = await api.post(
        "/api/dead-letters/retry",
        headers=ADMIN,
        json={"channel": "EMAIL", "reason": "permanent_error"},
    )
    assert by_filter.json()["retried"] >= 1
    await settled(api, made[2][1], {"sent": 1})


async def test_filters_and_bad_input(api: httpx.AsyncClient) -> None:
    """Bad query parameters are 400 invalid_parameter naming the parameter; a body that
    breaks a rule is 422 invalid naming the field."""
    ok = await api.get(
        "/api/dead-letters", headers=ADMIN, params={"older_than": "2h", "reason": "nope"}
    )
    assert ok.status_code == 200 and ok.json()["items"] == []
    for params, field in (
        ({"channel": "FAX"}, "channel"),
        ({"older_than": "yesterday"}, "older_than"),
        ({"older_than": "100000000d"}, "older_than"),
        ({"older_than": "9999-12-31T23:59:59-23:59"}, "older_than"),
        ({"cursor": "eDo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor"),
        ({"reason": "a\x00b"}, "reason"),  # were 500s: NUL Postgres text cannot hold
        ({"reason": "Retries Exhausted"}, "reason"),
        ({"older_than": "9" * 400}, "older_than"),
        ({"limit": "0"}, "limit"),
    ):
        response = await api.get("/api/dead-letters", headers=ADMIN, params=params)
        body = response.json()
        assert (response.status_code, body["error"], body["field"]) == (
            400,
            "invalid_parameter",
            field,
        ), body
    for body, field in (({"channel": "FAX"}, "channel"), ({"older_than": "soon"}, "older_than")):
        response = await api.post("/api/dead-letters/retry", headers=ADMIN, json=body)
        assert (response.status_code, response.json()["field"]) == (422, field)
    huge = await api.post(f"/api/dead-letters/{2**63}/retry", headers=ADMIN)
    assert (huge.status_code, huge.json()["field"]) == (400, "delivery_id")
    empty = await api.post("/api/dead-letters/retry", headers=ADMIN, json={})
    assert (empty.status_code, empty.json()["field"]) == (422, "ids")
    # Ids are bigints: beyond 2**63 - 1 is a bad parameter, named (it was a 500).
    beyond = await api.post("/api/dead-letters/99999999999999999999/retry", headers=ADMIN)
    assert (beyond.status_code, beyond.json()["field"]) == (400, "delivery_id")
    for ids in ([2**63], [0]):
        bulk = await api.post("/api/dead-letters/retry", headers=ADMIN, json={"ids": ids})
        assert (bulk.status_code, bulk.json()["field"]) == (422, "ids[0]"), bulk.text


async def test_dead_letters_need_an_admin_key(api: httpx.AsyncClient, pool: Any) -> None:
    from postbell.app.core import keys

    async with pool.connection() as conn:
        _, key = await keys.create_key(conn, "send", "sender")
    response = await api.get("/api/dead-letters", headers={"Authorization": f"Bearer {key}"})
    assert (response.status_code, response.json()["error"]) == (403, "forbidden")


async def test_cli_lists_and_requeues(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer, database_url: str
) -> None:
    import asyncio

    from tests.e2e.procs import env, run

    _, nid, delivery_id = await make_dead(api, smtp, code="554 5.7.1 Refused")
    environ = env(DATABASE_URL=database_url)
    listed = await asyncio.to_thread(
        run, "dead-letters", "--channel", "EMAIL", "--limit", "500", environ=environ
    )
    assert (
        listed.returncode == 0 and str(delivery_id) in listed.stdout and "SMTP 554" in listed.stdout
    )
    requeued = await asyncio.to_thread(
        run, "dead-letters", "--retry", str(delivery_id), environ=environ
    )
    assert requeued.stdout.strip() == "requeued 1 dead delivery"
    await settled(api, nid, {"sent": 1})


async def test_cli_retry_says_what_the_api_says(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer, database_url: str
) -> None:
    """`dead-letters --retry ID` on a delivery that is not dead fails as
    POST /api/dead-letters/{id}/retry does: the API's 404 detail, exit status 2. With
    several ids it names every one that is not dead and requeues none of them."""
    import asyncio

    from tests.e2e.procs import env, run

    _, dead_nid, dead_id = await make_dead(api, smtp, code="554 5.7.1 Refused")
    rid = unique("alive")
    await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={})
    nid = await send(api, to=[rid], message="Alive", channels=["IN_APP"])
    (delivery,) = (await settled(api, nid, {"sent": 1}))["deliveries"]
    sent_id = int(delivery["id"])
    environ = env(DATABASE_URL=database_url)

    answer = await api.post(f"/api/dead-letters/{sent_id}/retry", headers=ADMIN)
    assert answer.status_code == 404
    cli = await asyncio.to_thread(run, "dead-letters", "--retry", str(sent_id), environ=environ)
    assert (cli.returncode, cli.stderr, cli.stdout) == (
        2,
        f"postbell: {answer.json()['detail']}\n",
        "",
    )

    missing = 2**63 - 1
    several = await asyncio.to_thread(
        run,
        *("dead-letters", "--retry", str(dead_id), "--retry", str(sent_id)),
        *("--retry", str(missing)),
        environ=environ,
    )
    assert (several.returncode, several.stderr) == (
        2,
        f"postbell: no dead delivery {sent_id}, {missing}; nothing was requeued\n",
    )
    (still,) = (await settled(api, dead_nid, {"dead": 1}))["deliveries"]
    assert (still["id"], still["status"]) == (dead_id, "dead")
