"""A local Microsoft Teams webhook (a Workflows "post to a channel when a webhook
request is received" URL, or an Office 365 connector's incoming webhook).

Any ``POST /{path}`` is a webhook. The body must be what Teams renders: JSON with
``type: "message"`` and ``attachments``, each of ``contentType``
``application/vnd.microsoft.card.adaptive`` whose ``content`` is an Adaptive Card:
``type: "AdaptiveCard"``, a ``version`` (``major.minor``), a ``body`` list whose
elements each have a ``type`` (a ``TextBlock`` needs ``text``), and ``actions``
whose ``Action.OpenUrl`` each have a ``url`` (http/https) and a ``title``. A card
without them is refused 400 (``cards`` holds the accepted ones, by path).

Answers: 202 (Workflows) or, with ``legacy=True``, 200 ``1`` (connectors).
``script(path, ...)`` answers the next requests to a path: an HTTP status (``429``
with Retry-After 1, ``503``, ``404``), or ``"inner-429"``: a 200 whose text reports
"Microsoft Teams endpoint returned HTTP error 429", as connectors do.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.peers.http import HttpPeer

CARD_TYPE = "application/vnd.microsoft.card.adaptive"


def card_problem(payload: Any) -> str | None:
    """Why Teams would refuse ``payload``, or None."""
    if not isinstance(payload, dict) or payload.get("type") != "message":
        return "the body must be a message (type: message)"
    attachments = payload.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "a message needs attachments"
    for attachment in attachments:
        if not isinstance(attachment, dict) or attachment.get("contentType") != CARD_TYPE:
            return f"attachments must be of contentType {CARD_TYPE}"
        card = attachment.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return "content must be an AdaptiveCard"
        version = card.get("version")
        if not isinstance(version, str) or not all(p.isdigit() for p in version.split(".")):
            return "an AdaptiveCard needs a version like 1.4"
        body = card.get("body")
        if not isinstance(body, list) or not all(
            isinstance(e, dict) and e.get("type") for e in body
        ):
            return "an AdaptiveCard body is a list of elements with a type"
        for element in body:
            if element["type"] == "TextBlock" and not isinstance(element.get("text"), str):
                return "a TextBlock needs text"
        for action in card.get("actions") or []:
            if not isinstance(action, dict) or not action.get("type"):
                return "an action needs a type"
            if action["type"] == "Action.OpenUrl":
                url = action.get("url")
                if not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                    return "Action.OpenUrl needs an http(s) url"
                if not isinstance(action.get("title"), str):
                    return "Action.OpenUrl needs a title"
    return None


class TeamsPeer(HttpPeer):
    def __init__(self, *, legacy: bool = False) -> None:
        super().__init__()
        self.legacy = legacy
        self.scripts: dict[str, list[int | str]] = {}
        self.cards: dict[str, list[dict[str, Any]]] = {}
        self.refused: list[str] = []

    @property
    def allow_entry(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url_for(self, path: str) -> str:
        return f"{self.url}{path}"

    def script(self, path: str, *replies: int | str) -> None:
        with self.lock:
            self.scripts.setdefault(path, []).extend(replies)

    def cards_at(self, path: str) -> list[dict[str, Any]]:
        """The Adaptive Cards accepted at ``path`` (each attachment's content)."""
        with self.lock:
            return list(self.cards.get(path, []))

    def routes(self, app: web.Application) -> None:
        app.router.add_route("POST", "/{tail:.*}", self._post)

    async def _post(self, request: web.Request) -> web.Response:
        record = await self.record(request)
        with self.lock:
            queue = self.scripts.get(request.path)
            reply = queue.pop(0) if queue else None
        if reply == "inner-429":
            return web.Response(
                status=200,
                text="Webhook message delivery failed with error: Microsoft Teams endpoint"
                " returned HTTP error 429 with ContextId tcid=0,server=msgapi-prod",
            )
        if isinstance(reply, int):
            headers = {"Retry-After": "1"} if reply == 429 else {}
            return web.json_response({"error": {"code": str(reply)}}, status=reply, headers=headers)
        try:
            payload = json.loads(record.body)
        except ValueError:
            payload = None
        problem = card_problem(payload)
        if problem:
            with self.lock:
                self.refused.append(problem)
            return web.json_response(
                {"error": {"code": "InvalidRequestContent", "message": problem}}, status=400
            )
        with self.lock:
            for attachment in payload["attachments"]:
                self.cards.setdefault(request.path, []).append(attachment["content"])
        if self.legacy:
            return web.Response(status=200, text="1")
        return web.Response(status=202)
