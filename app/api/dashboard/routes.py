"""The dashboard at /dashboard: server-rendered pages for operators (docs/dashboard.md).

Routes translate HTTP: the session cookie, CSRF, forms and redirects. What a page shows
comes from the feature services (notifications, deliveries, dead letters, templates,
workflows) and ``dashboard.service`` (sessions, the overview's figures). The tables
are plain HTML and work without JavaScript; htmx refreshes the overview's figures and
uPlot draws its chart (both vendored under /static/vendor). Out of the OpenAPI schema.

Not behind the API's Bearer middleware (a browser sends a cookie): every page but the
sign-in needs a live session (``_require_session``), every POST its CSRF token.
"""

from __future__ import annotations

import datetime as dt
import hmac
import uuid
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from litestar import MediaType, Request, Response, Router, get, post
from litestar.params import FromPath
from litestar.response import Redirect

from postbell.app.api.auth import KeyPrincipal, KeyStore, client_address
from postbell.app.api.dashboard import service
from postbell.app.api.deliveries import service as deliveries
from postbell.app.api.experiments import service as experiments
from postbell.app.api.limits import Limits
from postbell.app.api.notifications import service as notifications
from postbell.app.api.ops import dead_letters
from postbell.app.api.templates import service as templates
from postbell.app.api.templates.schemas import PreviewIn
from postbell.app.api.workflows import service as workflows
from postbell.app.core.errors import NotFound, PostbellError, TooManyRequests

COOKIE = "pb_dashboard"
#: The sign-in form's own CSRF cookie (double submit): there is no session yet.
SIGN_IN_COOKIE = "pb_dashboard_signin"
PREFIX = "/dashboard"
PAGE = 50

#: The navigation, in order. A new page is one line here and its handler.
NAV = [
    ("overview", "Overview", f"{PREFIX}"),
    ("queues", "Queues", f"{PREFIX}/queues"),
    ("dead", "Dead letters", f"{PREFIX}/dead-letters"),
    ("notifications", "Notifications", f"{PREFIX}/notifications"),
    ("templates", "Templates", f"{PREFIX}/templates"),
    ("workflows", "Workflows", f"{PREFIX}/workflows"),
    ("experiments", "Experiments", f"{PREFIX}/experiments"),
]

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _seconds(value: float | None) -> str:
    """A duration an operator reads at a glance: 120 ms, 4.2 s, 3 min, 2.5 h."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v not in (None, "")}


_env.filters.update(seconds=_seconds, when=_when, clean=_clean)

#: Every dashboard answer: no caching of operator data, no framing, scripts only from
#: this origin (htmx, uPlot and the page's own file; no inline script).
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self';"
    " img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}


def _secure(request: Request[Any, Any, Any]) -> bool:
    """Whether the browser reached us over https: the request's scheme (uvicorn's
    proxy_headers sets it from a trusted proxy's X-Forwarded-Proto), or that header
    itself — trusting it can only add the Secure flag, never drop it."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _html(
    request: Request[Any, Any, Any], name: str, status_code: int = 200, **context: Any
) -> Response[str]:
    token = request.cookies.get(COOKIE)
    context.setdefault("csrf", service.csrf_token(token) if token else "")
    context.setdefault("error", None)
    context.setdefault("title", "Sign in")
    body = _env.get_template(name).render(nav=NAV, request_path=request.url.path, **context)
    return Response(body, media_type=MediaType.HTML, status_code=status_code, headers=HEADERS)


def _redirect(to: str) -> Redirect:
    return Redirect(to, status_code=303, headers=HEADERS)


async def _require_session(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """before_request: no live session → the sign-in page; a POST without this
    session's CSRF token → 403."""
    if request.url.path == f"{PREFIX}/sign-in":
        return None
    services = request.app.state.services
    token = request.cookies.get(COOKIE)
    if not token or not await service.session_valid(services.pool, services.settings, token):
        if request.method == "GET" and not request.url.path.endswith(".json"):
            return _redirect(f"{PREFIX}/sign-in")
        return Response(
            {"error": "unauthorized", "detail": "sign in to the dashboard"},
            status_code=401,
            headers=HEADERS,
        )
    if request.method == "POST":
        form = await request.form()
        if not service.csrf_ok(service.csrf_token(token), form.get("csrf")):
            return _html(
                request,
                "error.html.j2",
                403,
                title="Forbidden",
                message="missing or wrong CSRF token",
            )
    return None


@get("/sign-in")
async def sign_in_page(request: Request[Any, Any, Any]) -> Response[str]:
    pre = request.cookies.get(SIGN_IN_COOKIE) or service.new_token()
    response = _html(request, "sign_in.html.j2", csrf=pre, signed_out=False)
    response.set_cookie(
        SIGN_IN_COOKIE,
        pre,
        path=f"{PREFIX}/sign-in",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        max_age=3600,
    )
    return response


@post("/sign-in", status_code=303)
async def sign_in(request: Request[Any, Any, Any]) -> Response[Any]:
    """An admin API key opens a session. A send key, a recipient token or an unknown
    key is refused; failures count against the caller's address like any failed
    authentication (POSTBELL_RATE_LIMIT_AUTH_FAILURES): over it, 429."""
    services = request.app.state.services
    limits: Limits = services.limits
    store: KeyStore = services.keys
    form = await request.form()
    pre = request.cookies.get(SIGN_IN_COOKIE, "")
    given = str(form.get("csrf") or "")
    if not pre or not hmac.compare_digest(pre.encode(), given.encode()):
        return _html(
            request,
            "sign_in.html.j2",
            403,
            csrf=pre,
            signed_out=False,
            error="The form expired: sign in again.",
        )
    client = client_address(request)
    key = str(form.get("key") or "").strip()
    try:
        guessing = limits.auth_failures.exhausted(client)
        principal = await store.lookup(key, ask_database=not guessing) if key else None
        if isinstance(principal, KeyPrincipal) and principal.role == "admin":
            token = await service.open_session(services.pool, key)
            response = _redirect(PREFIX)
            response.set_cookie(
                COOKIE,
                token,
                path=PREFIX,
                httponly=True,
                samesite="strict",
                secure=_secure(request),
                max_age=service.SESSION_SECONDS,
            )
            response.delete_cookie(SIGN_IN_COOKIE, path=f"{PREFIX}/sign-in")
            return response
        if isinstance(principal, KeyPrincipal):
            return _html(
                request,
                "sign_in.html.j2",
                403,
                csrf=pre,
                signed_out=False,
                error="That is a send key: the dashboard needs an admin key.",
            )
        limits.auth_failures.take(client)
    except TooManyRequests as exc:
        refused = _html(
            request,
            "sign_in.html.j2",
            429,
            csrf=pre,
            signed_out=False,
            error="Too many failed sign-ins from this address: wait a moment.",
        )
        refused.headers["Retry-After"] = str(max(1, round(exc.retry_after or 1)))
        return refused
    return _html(
        request,
        "sign_in.html.j2",
        401,
        csrf=pre,
        signed_out=False,
        error="Not an admin key this server knows.",
    )


@post("/sign-out", status_code=303)
async def sign_out(request: Request[Any, Any, Any]) -> Response[Any]:
    token = request.cookies.get(COOKIE)
    if token:
        await service.close_session(request.app.state.services.pool, token)
    response = _redirect(f"{PREFIX}/sign-in")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@get("/")
async def overview(request: Request[Any, Any, Any]) -> Response[str]:
    figures = await service.overview(request.app.state.services.pool)
    name = "overview_figures.html.j2" if request.headers.get("hx-request") else "overview.html.j2"
    return _html(request, name, page="overview", title="Overview", **figures)


@get("/overview.json")
async def overview_json(request: Request[Any, Any, Any]) -> Response[Any]:
    sample = await service.chart_sample(request.app.state.services.pool)
    return Response(sample, headers=HEADERS)


@get("/queues")
async def queues_page(request: Request[Any, Any, Any]) -> Response[str]:
    data = await service.queues(request.app.state.services.pool)
    return _html(request, "queues.html.j2", page="queues", title="Queues", **data)


def _query(request: Request[Any, Any, Any], *names: str) -> dict[str, str | None]:
    return {n: (request.query_params.get(n) or None) for n in names}


@get("/dead-letters")
async def dead_letters_page(request: Request[Any, Any, Any]) -> Response[str]:
    filters = _query(request, "channel", "reason", "older_than")
    error, page = None, None
    try:
        page = await dead_letters.list_page(
            request.app.state.services.pool,
            **filters,
            cursor=request.query_params.get("cursor") or None,
            limit=PAGE,
        )
    except PostbellError as exc:
        error = exc.detail
    return _html(
        request,
        "dead_letters.html.j2",
        400 if error else 200,
        page="dead",
        title="Dead letters",
        filters=filters,
        result=page,
        error=error,
        requeued=request.query_params.get("requeued"),
    )


@post("/dead-letters/requeue", status_code=303)
async def requeue(request: Request[Any, Any, Any]) -> Response[Any]:
    """Requeue the dead letters ticked (or the one whose button was pressed) through the
    dead-letter service; back to the list with how many went."""
    form = await request.form()
    raw = form.getall("ids") if "ids" in form else []
    if form.get("id"):
        raw = [form.get("id")]
    ids = [int(v) for v in raw if str(v).isdigit()]
    services = request.app.state.services
    count = 0
    if ids:
        count = await dead_letters.requeue(services.pool, services.settings, ids=ids)
    back = str(form.get("back") or "")
    if not back.startswith(f"{PREFIX}/"):
        back = f"{PREFIX}/dead-letters"
    sep = "&" if "?" in back else "?"
    return _redirect(f"{back}{sep}requeued={count}")


@get("/notifications")
async def notifications_page(request: Request[Any, Any, Any]) -> Response[str]:
    filters = _query(
        request,
        "recipient",
        "category",
        "status",
        "channel",
        "template",
        "workflow",
        "created_after",
        "created_before",
    )
    error, result = None, None
    try:
        result = await notifications.list_page(
            request.app.state.services.pool,
            **filters,
            cursor=request.query_params.get("cursor") or None,
            limit=PAGE,
        )
    except PostbellError as exc:
        error = exc.detail
    return _html(
        request,
        "notifications.html.j2",
        400 if error else 200,
        page="notifications",
        title="Notifications",
        filters=filters,
        result=result,
        error=error,
        statuses=notifications.NOTIFICATION_STATUSES,
    )


@get("/notifications/{notification_id:uuid}")
async def notification_page(
    request: Request[Any, Any, Any], notification_id: FromPath[uuid.UUID]
) -> Response[str]:
    try:
        item = await notifications.read(
            request.app.state.services.pool,
            notification_id,
            cursor=request.query_params.get("cursor") or None,
            limit=PAGE,
        )
    except PostbellError as exc:
        return _not_found(request, exc)
    return _html(
        request,
        "notification.html.j2",
        page="notifications",
        title=f"Notification {notification_id}",
        item=item,
    )


@get("/deliveries/{delivery_id:int}")
async def delivery_page(
    request: Request[Any, Any, Any], delivery_id: FromPath[int]
) -> Response[str]:
    try:
        item = await deliveries.read(request.app.state.services.pool, delivery_id)
    except PostbellError as exc:
        return _not_found(request, exc)
    return _html(
        request,
        "delivery.html.j2",
        page="notifications",
        title=f"Delivery {delivery_id}",
        item=item,
        detail=lambda e: msgspec.json.encode(e.detail).decode() if e.detail else "",
        requeued=request.query_params.get("requeued"),
    )


@get("/templates")
async def templates_page(request: Request[Any, Any, Any]) -> Response[str]:
    result = await templates.list_all(
        request.app.state.services.pool,
        cursor=request.query_params.get("cursor") or None,
        limit=PAGE,
    )
    return _html(request, "templates.html.j2", page="templates", title="Templates", result=result)


@get("/templates/{key:str}")
async def template_page(request: Request[Any, Any, Any], key: FromPath[str]) -> Response[str]:
    """A template's active version and a preview (its example data and sample
    recipient) for the chosen locale, of every channel it has."""
    pool = request.app.state.services.pool
    try:
        item = await templates.get(pool, key)
    except PostbellError as exc:
        return _not_found(request, exc)
    locale = request.query_params.get("locale") or item.default_locale
    if locale not in item.locales:
        locale = item.default_locale
    previews: dict[str, Any] = {}
    for channel in item.locales.get(locale, {}):
        try:
            out = await templates.preview(
                pool, key, msgspec.convert({"channel": channel, "locale": locale}, PreviewIn)
            )
            previews[channel] = out.fields
        except PostbellError as exc:
            previews[channel] = {"error": exc.detail}
    return _html(
        request,
        "template.html.j2",
        page="templates",
        title=f"Template {key}",
        item=item,
        locale=locale,
        previews=previews,
    )


@get("/workflows")
async def workflows_page(request: Request[Any, Any, Any]) -> Response[str]:
    pool = request.app.state.services.pool
    result = await workflows.list_all(pool)
    return _html(
        request,
        "workflows.html.j2",
        page="workflows",
        title="Workflows",
        result=result,
        open_runs=await service.open_runs(pool),
    )


RUN_STATES = ("waiting", "digesting", "done", "cancelled", "throttled", "failed")


@get("/workflows/{key:str}")
async def workflow_page(request: Request[Any, Any, Any], key: FromPath[str]) -> Response[str]:
    state = request.query_params.get("state") or None
    if state not in (None, *RUN_STATES):
        state = None
    try:
        runs = await workflows.runs(
            request.app.state.services.pool,
            key,
            recipient=None,
            status=state,
            cursor=request.query_params.get("cursor") or None,
            limit=PAGE,
        )
    except PostbellError as exc:
        return _not_found(request, exc)
    return _html(
        request,
        "workflow.html.j2",
        page="workflows",
        title=f"Workflow {key}",
        key=key,
        runs=runs,
        state=state,
        states=RUN_STATES,
    )


@get("/experiments")
async def experiments_page(request: Request[Any, Any, Any]) -> Response[str]:
    items = await experiments.list_recent(request.app.state.services.pool)
    return _html(
        request, "experiments.html.j2", page="experiments", title="Experiments", items=items
    )


@get("/experiments/{key:str}")
async def experiment_page(request: Request[Any, Any, Any], key: FromPath[str]) -> Response[str]:
    try:
        result = await experiments.stats(request.app.state.services.pool, key)
    except PostbellError as exc:
        return _not_found(request, exc)
    return _html(
        request,
        "experiment.html.j2",
        page="experiments",
        title=f"Experiment {key}",
        result=result,
        metrics=experiments.METRICS,
    )


def _not_found(request: Request[Any, Any, Any], exc: PostbellError) -> Response[str]:
    status = 404 if isinstance(exc, NotFound) else exc.status_code
    return _html(request, "error.html.j2", status, title="Not found", message=exc.detail)


router = Router(
    path=PREFIX,
    route_handlers=[
        sign_in_page,
        sign_in,
        sign_out,
        overview,
        overview_json,
        queues_page,
        dead_letters_page,
        requeue,
        notifications_page,
        notification_page,
        delivery_page,
        templates_page,
        template_page,
        workflows_page,
        workflow_page,
        experiments_page,
        experiment_page,
    ],
    before_request=_require_session,
    include_in_schema=False,
    tags=["dashboard"],
)
