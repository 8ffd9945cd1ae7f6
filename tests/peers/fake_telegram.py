"""A local Telegram Bot API: ``POST /bot<token>/sendMessage``, as api.telegram.org
serves it (JSON or form body; answers ``{"ok": true, "result": Message}`` or
``{"ok": false, "error_code": N, "description": "..."}``, with ``parameters``).

What it checks, as Telegram does: the token in the path (401 ``Unauthorized``
otherwise; 404 for a malformed one), a ``chat_id`` the bot knows (``chat(id)``; 400
``Bad Request: chat not found`` otherwise), a non-empty ``text`` whose visible text
is at most 4,096 characters, and, with ``parse_mode: HTML``, markup Telegram can
parse: only its tags (``b``, ``strong``, ``i``, ``em``, ``u``, ``s``, ``code``,
``pre``, ``a href``, ...), balanced, and only the entities ``&lt;``, ``&gt;``,
``&amp;``, ``&quot;`` (400 ``Bad Request: can't parse entities: ...`` otherwise).

``script(chat_id, ...)`` answers the next sends to a chat in order: ``429`` (with
``parameters.retry_after``, 1 unless given as ``(429, seconds)``), ``403`` (bot was
blocked by the user), ``500``; ``block(chat_id)`` blocks the bot for good.
"""

from __future__ import annotations

import dataclasses
import html
import re
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

from tests.peers.http import HttpPeer

TOKEN = "123456789:AAEhBOweik6ad9r_QXMENQjcrGbqCr4K-ra"
_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "code",
    "pre",
    "a",
    "tg-spoiler",
    "span",
    "blockquote",
}
_ALLOWED_ENTITIES = {"lt", "gt", "amp", "quot"}

Script = int | tuple[int, int]


@dataclasses.dataclass
class Sent:
    message_id: int
    chat_id: str
    text: str  # as sent (markup included)
    visible: str  # as the member sees it
    parse_mode: str | None


class _Check(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.stack: list[str] = []
        self.visible: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAGS:
            self.error = f'Unsupported start tag "{tag}"'
        elif tag == "a" and not dict(attrs).get("href"):
            self.error = "Can't find end tag corresponding to start tag a"
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.error = f'Unmatched end tag "{tag}"'

    def handle_data(self, data: str) -> None:
        self.visible.append(data)

    def handle_entityref(self, name: str) -> None:
        if name not in _ALLOWED_ENTITIES:
            self.error = f'Unsupported entity "&{name};"'
        self.visible.append(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self.visible.append(html.unescape(f"&#{name};"))


def parse_html(text: str) -> tuple[str, str | None]:
    """The visible text of ``text`` in Telegram's HTML mode, and why it cannot be parsed."""
    if re.search(r"&(?!(?:lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);)", text):
        return text, "Can't parse entities: character '&' is reserved"
    parser = _Check()
    parser.feed(text)
    parser.close()
    if parser.error is None and parser.stack:
        parser.error = f'Can\'t find end tag corresponding to start tag "{parser.stack[-1]}"'
    return "".join(parser.visible), parser.error


class TelegramPeer(HttpPeer):
    def __init__(self, token: str = TOKEN) -> None:
        super().__init__()
        self.token = token
        self.chats: set[str] = set()
        self.blocked: set[str] = set()
        self.scripts: dict[str, list[Script]] = {}
        self.sent: list[Sent] = []
        self._next_id = 1

    def env(self) -> dict[str, str]:
        return {"TELEGRAM_BOT_TOKEN": self.token, "TELEGRAM_API_URL": self.url}

    def chat(self, chat_id: str) -> str:
        """A chat the bot can write to (a member who pressed Start)."""
        with self.lock:
            self.chats.add(chat_id)
        return chat_id

    def block(self, chat_id: str) -> None:
        with self.lock:
            self.blocked.add(chat_id)

    def script(self, chat_id: str, *replies: Script) -> None:
        with self.lock:
            self.scripts.setdefault(chat_id, []).extend(replies)

    def to(self, chat_id: str) -> list[Sent]:
        with self.lock:
            return [m for m in self.sent if m.chat_id == chat_id]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{bot}/{method}", self._method)

    async def _method(self, request: web.Request) -> web.Response:
        record = await self.record(request)
        bot = request.match_info["bot"]
        if not bot.startswith("bot") or ":" not in bot:
            return _error(404, "Not Found")
        if bot != f"bot{self.token}":
            return _error(401, "Unauthorized")
        if request.match_info["method"] != "sendMessage":
            return _error(404, "Not Found: method not found")
        try:
            if request.content_type == "application/json":
                params: dict[str, Any] = record.json()
            else:
                params = {k: str(v) for k, v in (await request.post()).items()}
        except ValueError:
            return _error(400, "Bad Request: can't parse JSON object")
        if not isinstance(params, dict):
            return _error(400, "Bad Request: can't parse JSON object")
        chat_id = str(params.get("chat_id", ""))
        text = params.get("text")
        if not chat_id:
            return _error(400, "Bad Request: chat_id is empty")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Bad Request: message text is empty")
        with self.lock:
            queue = self.scripts.get(chat_id)
            reply = queue.pop(0) if queue else None
            known = chat_id in self.chats
            blocked = chat_id in self.blocked
        if reply is not None:
            code, seconds = reply if isinstance(reply, tuple) else (reply, 1)
            if code == 429:
                return _error(
                    429, f"Too Many Requests: retry after {seconds}", {"retry_after": seconds}
                )
            if code == 403:
                return _error(403, "Forbidden: bot was blocked by the user")
            return _error(code, "Internal Server Error")
        if blocked:
            return _error(403, "Forbidden: bot was blocked by the user")
        if not known:
            return _error(400, "Bad Request: chat not found")
        mode = params.get("parse_mode")
        visible, problem = (text, None)
        if mode == "HTML":
            visible, problem = parse_html(text)
        elif mode is not None:
            return _error(400, f"Bad Request: unsupported parse_mode {mode}")
        if problem:
            return _error(400, f"Bad Request: {problem}")
        if len(visible) > 4096:
            return _error(400, "Bad Request: message is too long")
        with self.lock:
            message_id = self._next_id
            self._next_id += 1
            self.sent.append(Sent(message_id, chat_id, text, visible, mode))
        return web.json_response(
            {
                "ok": True,
                "result": {
                    "message_id": message_id,
                    "from": {"id": 123456789, "is_bot": True, "first_name": "postbell"},
                    "chat": {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else 0},
                    "date": 0,
                    "text": visible,
                },
            }
        )


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)
