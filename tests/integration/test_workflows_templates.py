"""Templates in workflow send steps, and what steps after a digest see: a send step
naming a template makes a templated notification at the version its trigger pinned,
rendered with the run's data, the digest's `events` (in trigger order) and `count`;
message fields render the same variables in the same sandbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from postbell.app.api.main import create_app
from postbell.app.core import db
from postbell.workers import workflows
from tests.conftest import (
    ADMIN,
    api_client,
    make_settings,
    query,
    running_worker,
    unique,
    wait_until,
)
from tests.integration.test_workflows_digest import fire
from tests.integration.test_workflows_engine import Env
from tests.peers.smtp import SmtpPeer


@pytest.fixture
async def env(fresh_database_url: str, smtp: SmtpPeer) -> AsyncIterator[Env]:
    """The API and a pool on a database of the test's own; EMAIL goes to the SMTP peer."""
    settings = make_settings(fresh_database_url, **smtp.env())
    pool = db.create_pool(fresh_database_url, max_size=12, name="postbell-test-wf-templates")
    await pool.open(wait=True)
    try:
        async with api_client(create_app(settings, pool=pool)) as api:
            yield Env(settings, pool, api)
    finally:
        await pool.close()


REPLY_DIGEST = {
    "default_locale": "en",
    "example_data": {"thread_id": "t1", "events": [{"author": "Ada"}], "count": 1},
    "locales": {
        "en": {
            "IN_APP": {
                "title": "{{ count }} new replies",
                "body": "{% for e in events %}{{ e.author }}{% if not loop.last %}, {% endif %}"
                "{% endfor %}",
            },
            "EMAIL": {
                "subject": "{{ count }} new replies in {{ thread_id }}",
                "html": "<ul>{% for e in events %}<li>{{ e.author }}</li>{% endfor %}</ul>",
                "text": "{% for e in events %}{{ loop.index }}. {{ e.author }}\n{% endfor %}",
            },
        }
    },
}

DIGEST_THEN_TEMPLATE = [
    {"type": "digest", "window": "1h", "key": "data.thread_id"},
    {"type": "send", "channels": ["IN_APP", "EMAIL"], "template": "reply-digest"},
]


async def put_template(env: Env, key: str, body: dict[str, Any]) -> int:
    response = await env.api.put(f"/api/templates/{key}", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


async def inbox(env: Env, who: str) -> list[tuple[str, str]]:
    response = await env.api.get(f"/api/inbox/{who}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return [(i["title"], i["body"]) for i in response.json()["items"]]


async def test_a_digest_of_three_triggers_renders_one_templated_message_listing_them_in_order(
    env: Env, smtp: SmtpPeer, fresh_database_url: str
) -> None:
    """Three triggers (HTTP, SQL, HTTP) for one recipient and thread make one digest;
    when it fires, one notification renders the template with `events` in trigger
    order and `count` 3: the inbox item lists Ada, Grace, Linus, and so does the
    email the SMTP server receives (subject with the run's own data)."""
    await put_template(env, "reply-digest", REPLY_DIGEST)
    key, who = unique("wf"), unique("r")
    address = f"{who}@example.org"
    response = await env.api.put(f"/api/recipients/{who}", json={"email": address}, headers=ADMIN)
    assert response.status_code in (200, 201), response.text
    await env.put(key, DIGEST_THEN_TEMPLATE)
    await env.trigger(key, to=[who], data={"thread_id": "t9", "author": "Ada"})
    await workflows.run_due(env.pool)
    async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
        await conn.execute(
            "SELECT postbell.trigger(%s, ARRAY[%s], %s::jsonb)",
            (key, who, json.dumps({"thread_id": "t9", "author": "Grace"})),
        )
    await workflows.run_due(env.pool)
    await env.trigger(key, to=[who], data={"thread_id": "t9", "author": "Linus"})
    await workflows.run_due(env.pool)
    await fire(env, key)

    [made] = await query(
        env.pool,
        "SELECT template_key, template_version, template_data, body FROM notifications",
    )
    assert (made["template_key"], made["template_version"]) == ("reply-digest", 1)
    assert made["template_data"] == {
        "thread_id": "t9",
        "author": "Ada",
        "events": [
            {"thread_id": "t9", "author": "Ada"},
            {"thread_id": "t9", "author": "Grace"},
            {"thread_id": "t9", "author": "Linus"},
        ],
        "count": 3,
    }
    async with running_worker(env.settings, env.pool):
        await wait_until(lambda: _async(smtp.to(address)))
        assert await inbox(env, who) == [("3 new replies", "Ada, Grace, Linus")]
    (email,) = smtp.to(address)
    assert email.message["Subject"] == "3 new replies in t9"
    text = email.message.get_body(preferencelist=("plain",)).get_content()
    assert text.replace("\r\n", "\n").strip() == "1. Ada\n2. Grace\n3. Linus"


async def _async(value: Any) -> Any:
    return value


async def test_message_fields_see_events_and_count_too(env: Env) -> None:
    """Without a template, a send step's title and message are Jinja2 in the same
    sandbox: after a digest of two triggers the message lists both authors."""
    key, who = unique("wf"), unique("r")
    await env.put(
        key,
        [
            {"type": "digest", "window": "1h"},
            {
                "type": "send",
                "channels": ["IN_APP"],
                "title": "{{count}} new replies",
                "message": "{% for e in events %}{{ e.author }};{% endfor %}",
            },
        ],
    )
    for author in ("Ada", "Grace"):
        await env.trigger(key, to=[who], data={"author": author})
        await workflows.run_due(env.pool)
    await fire(env, key)
    [made] = await query(env.pool, "SELECT title, body, template_key FROM notifications")
    assert made == {"title": "2 new replies", "body": "Ada;Grace;", "template_key": None}


async def test_a_run_without_a_digest_sees_its_own_data_as_the_one_event(env: Env) -> None:
    """No digest step: `events` is the run's own data, `count` 1, so one template
    serves both; a message whose data lacks a variable fails that run alone, with
    the reason, while the other run of the batch sends."""
    key = unique("wf")
    await env.put(
        key,
        [
            {
                "type": "send",
                "channels": ["IN_APP"],
                "message": "{{ events[0].author }} ({{ count }})",
            }
        ],
    )
    good, bad = unique("good"), unique("bad")
    first = await env.trigger(key, to=[good], data={"author": "Ada"})
    second = await env.trigger(key, to=[bad], data={"writer": "Ada"})
    await workflows.run_due(env.pool)
    [done] = await env.runs(first)
    [failed] = await env.runs(second)
    assert done["state"] == "done"
    assert failed["state"] == "failed"
    assert "author" in failed["reason"] and failed["reason"].startswith("step 0: message")
    [made] = await query(env.pool, "SELECT body FROM notifications")
    assert made["body"] == "Ada (1)"


async def test_a_trigger_pins_the_active_template_version(env: Env) -> None:
    """A run renders the version active when it was triggered: a template edit
    afterwards changes new triggers only (as for a notification, pinned at accept)."""
    tkey = unique("tpl")
    body = {
        "default_locale": "en",
        "example_data": {"events": []},
        "locales": {"en": {"IN_APP": {"body": "v1 {{ events | length }}"}}},
    }
    await put_template(env, tkey, body)
    key = unique("wf")
    await env.put(
        key,
        [
            {"type": "delay", "for": "1h"},
            {"type": "send", "channels": ["IN_APP"], "template": tkey},
        ],
    )
    early = await env.trigger(key, to=[unique("a")])
    body["locales"]["en"]["IN_APP"]["body"] = "v2"  # type: ignore[index]
    assert await put_template(env, tkey, body) == 2
    late = await env.trigger(key, to=[unique("b")])
    pins = await query(
        env.pool,
        "SELECT id::text AS id, templates FROM workflow_triggers ORDER BY created_at",
    )
    assert [(p["id"], p["templates"]) for p in pins] == [(early, {tkey: 1}), (late, {tkey: 2})]
    await workflows.run_due(env.pool)
    await env.due_now(early)
    await env.due_now(late)
    await workflows.run_due(env.pool)
    made = await query(
        env.pool,
        "SELECT template_key, template_version FROM notifications ORDER BY template_version",
    )
    assert [(m["template_key"], m["template_version"]) for m in made] == [(tkey, 1), (tkey, 2)]


async def test_trigger_checks_the_templates_data_and_a_named_template_cannot_be_deleted(
    env: Env, fresh_database_url: str
) -> None:
    """A trigger whose data lacks a key the template requires is 422 naming it (and
    postbell.trigger raises); a template a workflow names answers 409 to DELETE;
    once the workflow names another, the DELETE goes through."""
    tkey = unique("tpl")
    await put_template(
        env,
        tkey,
        {
            "default_locale": "en",
            "example_data": {"thread_id": "t1", "count": 1},
            "locales": {"en": {"IN_APP": {"body": "{{ thread_id }}: {{ count }}"}}},
        },
    )
    key = unique("wf")
    await env.put(key, [{"type": "send", "channels": ["IN_APP"], "template": tkey}])
    response = await env.api.post(
        f"/api/workflows/{key}/trigger", json={"to": ["x"], "data": {}}, headers=ADMIN
    )
    assert (response.status_code, response.json()["field"]) == (422, "data.thread_id")
    async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="thread_id"):
            await conn.execute("SELECT postbell.trigger(%s, ARRAY['x'], '{}')", (key,))
    assert (await query(env.pool, "SELECT count(*) AS n FROM workflow_triggers"))[0]["n"] == 0

    deleted = await env.api.delete(f"/api/templates/{tkey}", headers=ADMIN)
    assert deleted.status_code == 409, deleted.text
    await env.put(key, [{"type": "send", "channels": ["IN_APP"], "message": "plain"}])
    assert (await env.api.delete(f"/api/templates/{tkey}", headers=ADMIN)).status_code == 204


async def test_a_step_channel_the_template_cannot_render_is_422(env: Env) -> None:
    """A send step naming EMAIL with a template that has no EMAIL part (IN_APP is no
    fallback for EMAIL) is refused at PUT, naming the step's channels."""
    tkey = unique("tpl")
    await put_template(
        env, tkey, {"default_locale": "en", "locales": {"en": {"IN_APP": {"body": "hi"}}}}
    )
    response = await env.api.put(
        f"/api/workflows/{unique('wf')}",
        json={"steps": [{"type": "send", "channels": ["EMAIL"], "template": tkey}]},
        headers=ADMIN,
    )
    assert (response.status_code, response.json()["field"]) == (422, "steps[0].channels")
