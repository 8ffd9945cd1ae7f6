"""What the API's handlers share, built once per app and handed out by Litestar's
dependency injection: a handler declares ``pool: Pool``, ``settings: AppSettings``,
``waker: ProcessWaker``, ``batches: Batches`` or ``hub: Hub`` (the aliases below) and gets it."""

from __future__ import annotations

import dataclasses
from typing import Any

from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from postbell.app.api.auth import KeyStore
from postbell.app.api.inbox.live import InboxHub
from postbell.app.api.limits import Limits
from postbell.app.api.metrics.http import HttpMetrics
from postbell.app.api.notifications.batches import GroupCommit
from postbell.app.api.wakeups import Waker
from postbell.app.core import db
from postbell.app.core.settings import Settings

# Injected by name and never validated: these are the app's own objects, and
# validating them would convert them (the whole Settings) on every request.
Pool = NamedDependency[SkipValidation[db.Pool]]
AppSettings = NamedDependency[SkipValidation[Settings]]
ProcessWaker = NamedDependency[SkipValidation[Waker]]
Batches = NamedDependency[SkipValidation[GroupCommit]]
Hub = NamedDependency[SkipValidation[InboxHub]]
RateLimits = NamedDependency[SkipValidation[Limits]]

#: Seconds a request waits for a database connection before it answers 503.
API_POOL_TIMEOUT = 5.0


@dataclasses.dataclass(slots=True)
class Services:
    """The API process's long-lived parts. Built unopened; ``start`` opens them (the
    app's lifespan), ``stop`` closes what this app opened."""

    settings: Settings
    pool: db.Pool
    keys: KeyStore
    hub: InboxHub
    waker: Waker
    batches: GroupCommit
    limits: Limits
    owns_pool: bool
    #: this process's own HTTP request metrics (GET /metrics shows them)
    http_metrics: HttpMetrics = dataclasses.field(default_factory=HttpMetrics)

    @classmethod
    def build(cls, settings: Settings, pool: db.Pool | None = None) -> Services:
        """The services for ``settings``; a given ``pool`` is shared, never closed here
        (``postbell dev`` shares one with its worker)."""
        if not settings.database_url:
            raise ValueError("the API needs settings.database_url")
        owns_pool = pool is None
        if pool is None:
            pool = db.create_pool(
                settings.database_url,
                max_size=settings.db_pool_size,
                name="postbell-api",
                timeout=API_POOL_TIMEOUT,
            )
        return cls(
            settings=settings,
            pool=pool,
            keys=KeyStore(pool, settings.admin_key),
            hub=InboxHub(settings.database_url, pool),
            waker=Waker(settings.database_url),
            batches=GroupCommit(pool),
            limits=Limits.from_settings(settings),
            owns_pool=owns_pool,
        )

    async def start(self) -> None:
        if self.owns_pool:
            await self.pool.open(wait=False)
        await self.hub.start()
        await self.waker.start()

    async def stop(self) -> None:
        await self.batches.stop()
        await self.waker.stop()
        await self.hub.stop()
        if self.owns_pool:
            await self.pool.close()

    def dependencies(self) -> dict[str, Provide]:
        def value(thing: Any) -> Provide:
            return Provide(lambda: thing, use_cache=True, sync_to_thread=False)

        return {
            "pool": value(self.pool),
            "settings": value(self.settings),
            "waker": value(self.waker),
            "batches": value(self.batches),
            "hub": value(self.hub),
            "limits": value(self.limits),
        }
