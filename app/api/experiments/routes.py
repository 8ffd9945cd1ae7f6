"""HTTP for experiments: the statistics (send keys), and the open pixel and click
redirects that emails link to (open: the signed token is the credential)."""

from __future__ import annotations

import base64

from litestar import Response, Router, get
from litestar.params import FromPath
from litestar.response import Redirect

from postbell.app.api.auth import require_role
from postbell.app.api.deps import AppSettings, Pool
from postbell.app.api.experiments import service
from postbell.app.api.experiments.schemas import ExperimentStats
from postbell.app.api.types import Key

#: a transparent 1x1 GIF
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@get("/{key:str}")
async def experiment_stats(pool: Pool, key: FromPath[Key]) -> ExperimentStats:
    """Per variant: sent, and delivered / opened / clicked / unsubscribed with rates,
    the difference to the first variant, its 95 % CI and the z-test's p-value."""
    return await service.stats(pool, key)


@get("/r/{token:str}", include_in_schema=False)
async def tracked_link(pool: Pool, settings: AppSettings, token: FromPath[str]) -> Redirect:
    """A tracked email link: 302 to the URL its token signs (404 for any other token)."""
    url = await service.click(pool, settings, token)
    return Redirect(path=url, status_code=302, headers={"Cache-Control": "no-store"})


@get("/o/{token:str}", include_in_schema=False)
async def open_pixel(pool: Pool, settings: AppSettings, token: FromPath[str]) -> Response[bytes]:
    """An email's open pixel: always the image; a valid token counts the open."""
    await service.opened(pool, settings, token)
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})


experiments = Router(
    path="/api/experiments",
    guards=[require_role("send")],
    tags=["experiments"],
    route_handlers=[experiment_stats],
)
tracking = Router(path="/", route_handlers=[tracked_link, open_pixel])
