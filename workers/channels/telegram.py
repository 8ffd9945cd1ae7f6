"""TELEGRAM: a message to the recipient's ``telegram_chat_id`` through the Bot API's
``sendMessage`` (TELEGRAM_BOT_TOKEN; TELEGRAM_API_URL for a local Bot API server).

Formatting: parse mode HTML, with every piece of the notification escaped (``&``,
``<``, ``>``, and quotes in the link), so its text is shown as written and can never
become markup: the title in bold, the body, an "Open" link to ``action_url``; cut so
that the visible text stays within Telegram's 4,096 characters.

Pacing: the provider bucket (POSTBELL_PROVIDER_RATE_TELEGRAM, 25/s unless set)
keeps every worker within the bot's global limit; within a batch, a chat gets one
message and the rest wait a second (Telegram allows about one a second per chat).
Answers sorted once: 429 retried after ``parameters.retry_after``; 403 "bot was
blocked by the user", "user is deactivated", or the bot removed from the chat mark
the chat inactive; 400 "chat not found" → ``invalid_address``; 400 about entities →
``invalid_content``; 401/404 (the token) and 5xx retried; other 4xx permanent.

The token is part of the request path: no error text or log line carries the URL,
and any text that could still hold the token has it replaced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import html
from collections.abc import Sequence
from typing import Any, ClassVar

import aiohttp
import msgspec

from postbell.app.core.settings import Settings, TelegramSettings
from postbell.workers.channels.base import Channel, Delivery, Outcome, invalid_content
from postbell.workers.channels.http import classify_exception, new_session

TEXT_LIMIT = 4096  # characters of visible text in one message
CONCURRENCY = 32
#: How long a second message to the same chat in one batch waits.
PER_CHAT_SECONDS = 1.0


def message_html(delivery: Delivery) -> str:
    """The message in Telegram's HTML parse mode, every part escaped."""
    title = delivery.title or ""
    link = "\nOpen" if delivery.action_url else ""
    room = TEXT_LIMIT - len(title) - (1 if title else 0) - len(link)
    body = delivery.body if len(delivery.body) <= room else delivery.body[: max(room - 1, 0)] + "…"
    parts = []
    if title:
        parts.append(f"<b>{html.escape(title, quote=False)}</b>")
    parts.append(html.escape(body, quote=False))
    if delivery.action_url:
        parts.append(f'<a href="{html.escape(delivery.action_url, quote=True)}">Open</a>')
    return "\n".join(parts)


def classify(status: int, answer: Any, scrub: Any = str) -> Outcome:
    """A Bot API answer that is not ``ok``."""
    description = ""
    retry_after: float | None = None
    if isinstance(answer, dict):
        description = str(answer.get("description") or "")[:300]
        parameters = answer.get("parameters")
        if isinstance(parameters, dict):
            try:
                retry_after = float(parameters["retry_after"])
            except (KeyError, TypeError, ValueError):
                retry_after = None
            if parameters.get("migrate_to_chat_id") is not None:
                description += (
                    f" (the group is now supergroup {parameters['migrate_to_chat_id']}:"
                    " update telegram_chat_id)"
                )
    text = scrub(f"Telegram answered HTTP {status}: {description}".strip().rstrip(":"))
    lowered = description.lower()
    if status == 429 or status >= 500 or status == 408:
        return Outcome.retry(text, retry_after=retry_after)
    if status in (401, 404):
        return Outcome.retry(f"Telegram refused the bot token (HTTP {status}): {description}")
    if status == 403:
        if "blocked" in lowered or "kicked" in lowered or "not a member" in lowered:
            return Outcome.fail(text, "unsubscribed", address_inactive=True)
        if "deactivated" in lowered:
            return Outcome.fail(text, "invalid_address", address_inactive=True)
        return Outcome.fail(text)
    if status == 400:
        if "chat not found" in lowered or "supergroup" in lowered or "peer_id_invalid" in lowered:
            return Outcome.fail(text, "invalid_address")
        if "entit" in lowered or "message is too long" in lowered:
            return Outcome.fail(text, "invalid_content")
    return Outcome.fail(text)


class TelegramChannel:
    name: ClassVar[str] = "TELEGRAM"
    address_field: ClassVar[str | None] = "telegram_chat_id"
    inactive_field: ClassVar[str | None] = "telegram_inactive_at"

    def __init__(self, telegram: TelegramSettings, *, timeout: float) -> None:
        self._token = telegram.bot_token
        self._url = f"{telegram.api_url}/bot{telegram.bot_token}/sendMessage"
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

    def __repr__(self) -> str:
        return "TelegramChannel()"  # never the URL: it holds the token

    @classmethod
    def from_settings(cls, settings: Settings) -> Channel | None:
        if settings.telegram is None:
            return None
        return cls(settings.telegram, timeout=settings.http_timeout)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # The operator's Bot API, not a recipient's URL: no private-address guard.
            self._session = new_session(timeout=self.timeout, guard=None, per_host=CONCURRENCY)
        return self._session

    def scrub(self, text: str) -> str:
        return text.replace(self._token, "<bot token>")

    async def send(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(deliveries)
        seen: set[str] = set()
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=PER_CHAT_SECONDS)
        for index, delivery in enumerate(deliveries):
            chat = delivery.recipient.telegram_chat_id
            if not chat:
                outcomes[index] = Outcome.skip("no_address")
            elif chat in seen:
                outcomes[index] = Outcome.wait("provider_pacing", later)
            else:
                seen.add(chat)
        to_send = [i for i, o in enumerate(outcomes) if o is None]
        sent = await asyncio.gather(*(self._send_one(deliveries[i]) for i in to_send))
        for index, outcome in zip(to_send, sent, strict=True):
            outcomes[index] = outcome
        return [o for o in outcomes if o is not None]

    async def _send_one(self, delivery: Delivery) -> Outcome:
        chat = delivery.recipient.telegram_chat_id
        assert chat
        try:
            payload = msgspec.json.encode(
                {"chat_id": chat, "text": message_html(delivery), "parse_mode": "HTML"}
            )
        except Exception as exc:  # this delivery only
            return invalid_content("Telegram", exc)
        async with self._limit:
            try:
                async with self.session.post(
                    self._url,
                    data=payload,
                    headers={"Content-Type": "application/json"},
                    allow_redirects=False,
                ) as response:
                    raw = (await response.read())[:65536]
                    status = response.status
            except Exception as exc:
                outcome = classify_exception(exc, "Telegram")
                return dataclasses.replace(outcome, error=self.scrub(outcome.error or ""))
        try:
            answer = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            answer = None
        if status == 200 and isinstance(answer, dict) and answer.get("ok") is True:
            result = answer.get("result")
            message_id = result.get("message_id") if isinstance(result, dict) else None
            return Outcome.sent(str(message_id) if message_id is not None else None)
        return classify(status, answer, self.scrub)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
