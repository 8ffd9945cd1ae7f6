"""Live inboxes: one LISTEN connection per API process, fanned out to its SSE clients.

Routers NOTIFY ``postbell_inbox`` once per routing transaction with the id range of
the IN_APP items they wrote (``{"lo": ..., "hi": ...}``); inbox changes NOTIFY
``{"r": recipient, "u": action, "ids": [...]}``. The hub turns each into events for
the clients connected to *this* process: it asks the database only about recipients
that have a client here, however large the fan-out was.

Each client has a bounded queue. A client too slow to drain it loses its backlog and
gets one ``resync`` event (it refetches), so it can never stall the hub or the
others. After the LISTEN connection comes back (a database restart), every client
gets ``resync``: notifications sent meanwhile were not heard. When the process stops,
``close_streams`` ends every stream, so the server's graceful stop does not wait on
browsers that would keep them open for ever (they reconnect, with Last-Event-ID).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import dataclasses
import json
from typing import Any

import msgspec
import structlog

from postbell.app.core import db

log = structlog.get_logger("postbell.inbox")

CHANNEL = "postbell_inbox"
QUEUE_SIZE = 256


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str
    id: int | None = None


#: Put in a client's queue when the process stops: its stream ends.
CLOSE = Event("close", "")


@dataclasses.dataclass(eq=False)
class Client:
    recipient_id: int
    queue: asyncio.Queue[Event] = dataclasses.field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE)
    )

    def push(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Too slow to keep up: drop the backlog, ask it to refetch.
            while not self.queue.empty():
                self.queue.get_nowait()
            if event is not CLOSE:
                event = Event("resync", json.dumps({"reason": "client_too_slow"}))
            self.queue.put_nowait(event)


def item_json(row: Any) -> str:
    return msgspec.json.encode(
        {
            "id": row["id"],
            "notification_id": str(row["notification_id"]),
            "title": row["title"],
            "body": row["body"],
            "action_url": row["action_url"],
            "category": row["category"],
            "priority": row["priority"],
            "metadata": row["metadata"],
            "created_at": row["created_at"],
            "read_at": row["read_at"],
            "seen_at": row["seen_at"],
            "archived_at": row["archived_at"],
        }
    ).decode()


class InboxHub:
    def __init__(self, database_url: str, pool: db.Pool) -> None:
        self._url = database_url
        self._pool = pool
        self._clients: dict[int, set[Client]] = collections.defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._closing = False

    @property
    def clients(self) -> int:
        return sum(len(c) for c in self._clients.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="inbox-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def streams_of(self, recipient_id: int) -> int:
        """How many streams of this recipient this process serves now."""
        return len(self._clients.get(recipient_id, ()))

    def subscribe(self, recipient_id: int) -> Client:
        client = Client(recipient_id)
        self._clients[recipient_id].add(client)
        if self._closing:
            client.push(CLOSE)
        return client

    def close_streams(self) -> None:
        """The process is stopping: end every open stream now, and any opened from now on."""
        self._closing = True
        self._broadcast(CLOSE)

    def unsubscribe(self, client: Client) -> None:
        group = self._clients.get(client.recipient_id)
        if group is not None:
            group.discard(client)
            if not group:
                del self._clients[client.recipient_id]

    async def _listen(self) -> None:
        delay, first = 0.5, True
        while True:
            try:
                async with await db.connect(self._url, name="postbell-inbox-listen") as conn:
                    await conn.execute(f"LISTEN {CHANNEL}".encode())
                    self._ready.set()
                    if not first:
                        log.info("inbox_listen_reconnected", clients=self.clients)
                        self._broadcast(Event("resync", json.dumps({"reason": "reconnected"})))
                    first, delay = False, 0.5
                    await self._consume(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "inbox_listen_lost", error=db.describe_error(exc, self._url), retry_in=delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _consume(self, conn: db.Conn) -> None:
        pending: asyncio.Queue[str] = asyncio.Queue()

        async def reader() -> None:
            async for note in conn.notifies():
                pending.put_nowait(note.payload)

        reading = asyncio.create_task(reader())
        try:
            while True:
                getter = asyncio.create_task(pending.get())
                done, _ = await asyncio.wait({getter, reading}, return_when=asyncio.FIRST_COMPLETED)
                if reading in done:
                    getter.cancel()
                    reading.result()  # raises the connection's error
                    return
                batch = [getter.result()]
                while not pending.empty():
                    batch.append(pending.get_nowait())
                if self._clients:
                    try:
                        await self._dispatch(batch)
                    except Exception as exc:  # a failed lookup must not kill the listener
                        log.warning("inbox_dispatch_failed", error=f"{type(exc).__name__}: {exc}")
                        self._broadcast(Event("resync", json.dumps({"reason": "error"})))
        finally:
            reading.cancel()

    def _broadcast(self, event: Event) -> None:
        for group in list(self._clients.values()):
            for client in list(group):
                client.push(event)

    async def _dispatch(self, payloads: list[str]) -> None:
        ranges: list[tuple[int, int]] = []
        updates: list[dict[str, Any]] = []
        for payload in payloads:
            try:
                message = json.loads(payload)
            except ValueError:
                continue
            if "lo" in message:
                ranges.append((int(message["lo"]), int(message["hi"])))
            elif "r" in message and int(message["r"]) in self._clients:
                updates.append(message)
        touched: set[int] = set()
        if ranges:
            connected = list(self._clients)
            async with self._pool.connection() as conn:
                rows = await db.fetch_all(
                    conn,
                    "inbox_live_items",
                    {
                        "los": [r[0] for r in ranges],
                        "his": [r[1] for r in ranges],
                        "recipient_ids": connected,
                    },
                )
            for row in rows:
                touched.add(row["recipient_id"])
                event = Event("notification", item_json(row), id=row["id"])
                for client in list(self._clients.get(row["recipient_id"], ())):
                    client.push(event)
        for message in updates:
            recipient = int(message["r"])
            touched.add(recipient)
            event = Event("update", json.dumps({"action": message["u"], "ids": message.get("ids")}))
            for client in list(self._clients.get(recipient, ())):
                client.push(event)
        if touched:
            await self._send_counts(touched)

    async def _send_counts(self, recipients: set[int]) -> None:
        async with self._pool.connection() as conn:
            rows = await db.fetch_all(
                conn, "inbox_live_counts", {"recipient_ids": list(recipients)}
            )
        for row in rows:
            event = Event("counts", counts_json(row["unread_count"], row["unseen_count"]))
            for client in list(self._clients.get(row["recipient_id"], ())):
                client.push(event)


def counts_json(unread: int, unseen: int) -> str:
    return json.dumps({"unread_count": int(unread), "unseen_count": int(unseen)})


REPLAY_LIMIT = 200
HEARTBEAT_SECONDS = 15.0


async def stream(
    hub: InboxHub,
    pool: db.Pool,
    recipient_id: int,
    last_event_id: int | None,
    *,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> collections.abc.AsyncIterator[Event | None]:
    """One client's events: first what it missed since ``last_event_id`` (or a
    ``resync`` when that is too much), then the counts, then live events; ``None``
    when a heartbeat is due. Every event carries the id of the newest item the client
    has, so a reconnect's Last-Event-ID says where to resume."""
    client = hub.subscribe(recipient_id)  # before the replay: nothing falls in between
    try:
        seen: collections.deque[int] = collections.deque(maxlen=QUEUE_SIZE * 4)
        async with pool.connection() as conn:
            if last_event_id is not None:
                rows = await db.fetch_all(
                    conn,
                    "inbox_replay",
                    {
                        "recipient_id": recipient_id,
                        "after": last_event_id,
                        "limit": REPLAY_LIMIT + 1,
                    },
                )
                if len(rows) > REPLAY_LIMIT:
                    yield Event("resync", json.dumps({"reason": "too_many_missed"}))
                else:
                    for row in rows:
                        seen.append(row["id"])
                        yield Event("notification", item_json(row), id=row["id"])
            last_row = await db.fetch_one(conn, "inbox_last_id", {"recipient_id": recipient_id})
            counts = await db.fetch_all(
                conn, "inbox_live_counts", {"recipient_ids": [recipient_id]}
            )
        last = int(last_row["last_id"]) if last_row else 0
        yield Event(
            "counts", counts_json(counts[0]["unread_count"], counts[0]["unseen_count"]), id=last
        )
        while True:
            try:
                event = await asyncio.wait_for(client.queue.get(), timeout=heartbeat)
            except TimeoutError:
                yield None
                continue
            if event is CLOSE:
                return
            if event.event == "notification" and event.id is not None:
                if event.id in seen:  # announced twice (overlapping ranges)
                    continue
                seen.append(event.id)
                last = max(last, event.id)
            yield Event(event.event, event.data, id=event.id if event.id is not None else last)
    finally:
        hub.unsubscribe(client)
