"""Per-topic mutes ("mute this community"): preferences.topics round-trips and merges,
bad channel names are 422 naming the topic, and topic notifications and workflow
triggers to a topic record a muted member's deliveries skipped / opted_out in the
routing statement (required categories ignore mutes, like every opt-out)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from postbell.app.core import db
from tests.conftest import ADMIN, query, unique, wait_until
from tests.integration.test_controls import channel_states, token_for
from tests.integration.test_delivery_flow import send, settled
from tests.peers.smtp import SmtpPeer


async def put_prefs(api: httpx.AsyncClient, rid: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.put(f"/api/recipients/{rid}/preferences", headers=ADMIN, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_topics_round_trip_and_merge_per_topic(api: httpx.AsyncClient) -> None:
    """GET answers what PUT stored; a later PUT merges channel maps per topic, a
    true/false replaces, null forgets the topic, and other preferences stay. A topic
    that does not exist (yet) may be muted."""
    rid = unique("mute")
    empty = (await api.get(f"/api/recipients/{rid}/preferences", headers=ADMIN)).json()
    assert empty["topics"] == {}
    await put_prefs(
        api,
        rid,
        {
            "channels": {"SMS": False},
            "topics": {"community-1": False, "community-2": {"EMAIL": False}},
        },
    )
    got = (await api.get(f"/api/recipients/{rid}/preferences", headers=ADMIN)).json()
    assert got["topics"] == {"community-1": False, "community-2": {"EMAIL": False}}
    # the recipient's own token may mute too
    second = await api.put(
        f"/api/recipients/{rid}/preferences",
        headers=token_for(rid),
        json={
            "topics": {
                "community-2": {"PUSH": False, "EMAIL": True},
                "community-3": True,
                "never-created": {"IN_APP": False},
            }
        },
    )
    assert second.status_code == 200, second.text
    assert second.json()["topics"] == {
        "community-1": False,
        "community-2": {"EMAIL": True, "PUSH": False},
        "community-3": True,
        "never-created": {"IN_APP": False},
    }
    third = await put_prefs(
        api, rid, {"topics": {"community-1": None, "community-3": {"EMAIL": False}}}
    )
    assert third["topics"] == {
        "community-2": {"EMAIL": True, "PUSH": False},
        "community-3": {"EMAIL": False},
        "never-created": {"IN_APP": False},
    }
    assert third["channels"] == {"SMS": False}
    # a PUT that names no topics keeps them
    fourth = await put_prefs(api, rid, {"categories": {"events": {"SMS": False}}})
    assert fourth["topics"] == third["topics"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"topics": {"community-42": {"FAX": False}}}, "topics.community-42"),
        ({"topics": {"community-42": {"email": False}}}, "topics.community-42"),
        ({"topics": {"community-42": "off"}}, "topics"),
        ({"topics": {"community-42": {"EMAIL": "no"}}}, "topics"),
        ({"topics": {"no spaces": False}}, "topics"),
        ({"topics": ["community-42"]}, "topics"),
    ],
)
async def test_bad_topic_mutes_are_422_naming_the_field(
    api: httpx.AsyncClient, pool: db.Pool, body: dict[str, Any], field: str
) -> None:
    rid = unique("badmute")
    response = await api.put(f"/api/recipients/{rid}/preferences", headers=ADMIN, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    rows = await query(
        pool,
        "SELECT count(*) AS n FROM preferences p JOIN recipients r ON r.id = p.recipient_id"
        " WHERE r.external_id = %s",
        (rid,),
    )
    assert rows[0]["n"] == 0


async def topic_with(api: httpx.AsyncClient, mutes: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A topic whose members are named by role; ``mutes`` maps a role to its topics
    preference (the topic's key is written as "*")."""
    topic = unique("community")
    members = {role: unique(role) for role in ("plain", "all", "email", "other", *mutes)}
    for role, rid in members.items():
        await api.put(f"/api/recipients/{rid}", headers=ADMIN, json={"email": f"{rid}@example.org"})
        if role in mutes:
            await put_prefs(
                api,
                rid,
                {"topics": {(topic if k == "*" else k): v for k, v in mutes[role].items()}},
            )
    response = await api.put(
        f"/api/topics/{topic}/subscribers",
        headers=ADMIN,
        json={"recipients": list(members.values())},
    )
    assert response.status_code == 200, response.text
    return topic, members


MUTES = {
    "all": {"*": False},
    "email": {"*": {"EMAIL": False}},
    "other": {"another-community": False, "*": {"PUSH": False}},
}


async def states_by_recipient(
    api: httpx.AsyncClient, nid: str, members: dict[str, str]
) -> dict[str, dict[str, tuple[str, str | None]]]:
    body = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()
    role = {rid: r for r, rid in members.items()}
    out: dict[str, dict[str, tuple[str, str | None]]] = {}
    for d in body["deliveries"]:
        out.setdefault(role[d["recipient"]], {})[d["channel"]] = (d["status"], d["reason"])
    return out


async def test_a_topic_notification_skips_the_members_who_muted_it(
    api: httpx.AsyncClient, worker: None, smtp: SmtpPeer
) -> None:
    """A member who muted the topic gets every channel skipped / opted_out; one who
    muted its EMAIL gets the inbox item only; a mute of another topic (or of a channel
    the notification does not use) changes nothing. The same member sent to directly
    (no topic) is not muted."""
    topic, members = await topic_with(api, MUTES)
    nid = await send(api, topic=topic, message="Meet-up on Friday", channels=["IN_APP", "EMAIL"])
    await settled(api, nid, {"sent": 5, "skipped": 3})
    assert await states_by_recipient(api, nid, members) == {
        "plain": {"IN_APP": ("sent", None), "EMAIL": ("sent", None)},
        "all": {"IN_APP": ("skipped", "opted_out"), "EMAIL": ("skipped", "opted_out")},
        "email": {"IN_APP": ("sent", None), "EMAIL": ("skipped", "opted_out")},
        "other": {"IN_APP": ("sent", None), "EMAIL": ("sent", None)},
    }
    assert smtp.to(f"{members['all']}@example.org") == []
    direct = await send(api, to=[members["all"]], message="Your order", channels=["IN_APP"])
    await settled(api, direct, {"sent": 1})


async def test_required_categories_ignore_topic_mutes(api: httpx.AsyncClient, worker: None) -> None:
    """A required category (a security notice) reaches a member who muted the topic."""
    await api.put("/api/categories/mute-required", headers=ADMIN, json={"required": True})
    topic, members = await topic_with(api, {})
    await put_prefs(api, members["all"], {"topics": {topic: False}})
    nid = await send(
        api, topic=topic, message="Password policy", channels=["IN_APP"], category="mute-required"
    )
    await settled(api, nid, {"sent": 4})
    assert await channel_states(api, nid) == {"IN_APP": ("sent", None)}


async def test_a_workflow_triggered_to_a_topic_honours_its_mutes(
    api: httpx.AsyncClient, pool: db.Pool, worker: None, smtp: SmtpPeer
) -> None:
    """The runs of a topic trigger make notifications for recipient lists; each
    carries the trigger's topic (metadata.workflow.topic), and routing applies the
    members' mutes of it: skipped / opted_out, the run itself goes on to its end."""
    topic, members = await topic_with(api, MUTES)
    key = unique("wf-mute")
    put = await api.put(
        f"/api/workflows/{key}",
        headers=ADMIN,
        json={"steps": [{"type": "send", "channels": ["IN_APP", "EMAIL"], "message": "New post"}]},
    )
    assert put.status_code == 200, put.text
    trigger = await api.post(f"/api/workflows/{key}/trigger", headers=ADMIN, json={"topic": topic})
    assert trigger.status_code == 202, trigger.text
    trigger_id = trigger.json()["id"]

    async def done() -> list[dict[str, Any]] | None:
        rows = await query(
            pool,
            "SELECT state, notification_ids FROM workflow_runs WHERE trigger_id = %s",
            (trigger_id,),
        )
        return rows if rows and all(r["state"] == "done" for r in rows) else None

    runs = await wait_until(done)
    made = {n for r in runs for n in r["notification_ids"]}
    assert len(made) == 1
    nid = str(made.pop())
    await settled(api, nid, {"sent": 5, "skipped": 3})
    metadata = (await api.get(f"/api/notifications/{nid}", headers=ADMIN)).json()["metadata"]
    assert metadata["workflow"]["topic"] == topic
    assert await states_by_recipient(api, nid, members) == {
        "plain": {"IN_APP": ("sent", None), "EMAIL": ("sent", None)},
        "all": {"IN_APP": ("skipped", "opted_out"), "EMAIL": ("skipped", "opted_out")},
        "email": {"IN_APP": ("sent", None), "EMAIL": ("skipped", "opted_out")},
        "other": {"IN_APP": ("sent", None), "EMAIL": ("sent", None)},
    }
