"""Message templates: compile, validate and render one channel x locale of a template.

A template holds, per locale, one *part* per channel (``{"EMAIL": {"subject": ...,
"html": ..., "text": ...}}``); each field of a part is a Jinja2 template rendered in
the sandbox (``ImmutableSandboxedEnvironment``: no ``__class__``, ``__globals__``,
no mutation of lists or dicts) with ``StrictUndefined`` (a missing variable is an
error, never an empty string). Only an EMAIL's ``html`` is autoescaped: values from
``data`` arrive escaped there and unchanged everywhere else (text, SMS, PUSH ...).

Rendering is bounded: every ``for`` loop draws on one budget of iterations per
field, ``range`` is the sandbox's (at most 100,000 items), ``*``, ``+`` and ``**``
refuse results past the output cap, padding widths (``center``, ``format``, ``%``)
are capped, and a field's output stops at ``MAX_OUTPUT`` characters. Past any of
them the render fails with a ``TemplateError`` naming the limit.

Variables: ``data``'s keys, ``recipient`` (external_id, name, email, locale,
timezone, metadata), ``notification`` (id, category, priority) and, for EMAIL,
``unsubscribe_url``. Filters ``datetime``, ``date``, ``time``, ``number``,
``decimal``, ``percent``, ``currency`` and ``timedelta`` format with Babel in the
recipient's locale and timezone.

No HTTP and no database here: the API validates and previews with it, the workers
render with it.
"""

from __future__ import annotations

import collections
import contextvars
import dataclasses
import datetime as dt
import functools
import re
import types
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from html.parser import HTMLParser
from typing import Any

import babel
import babel.dates
import babel.numbers
import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from postbell.app.core.channels import CHANNELS

#: The fields of each channel's part; True: the field is required in the part.
FIELDS: dict[str, dict[str, bool]] = {
    "IN_APP": {"title": False, "body": True, "action_url": False},
    "EMAIL": {"subject": True, "html": True, "text": False},
    "PUSH": {"title": False, "body": True},
    "SMS": {"body": True},
}
#: The channels without a part shape of their own take title, body and action_url.
GENERIC_FIELDS: dict[str, bool] = {"title": False, "body": True, "action_url": False}
#: Variables postbell provides; ``data`` may not use these names.
RESERVED = frozenset({"recipient", "notification", "unsubscribe_url"})
#: Filters whose output depends on the recipient's timezone (and locale).
TZ_FILTERS = frozenset({"datetime", "time"})
#: Filters whose output depends on the recipient's locale.
LOCALE_FILTERS = frozenset({"date", "number", "decimal", "percent", "currency", "timedelta"})

MAX_OUTPUT = 200_000  # characters per rendered field
MAX_LOOP_ITERATIONS = 10_000  # per rendered field, all loops together
MAX_WIDTH = 1_000  # padding widths (center, format, % and str.format)
MAX_SOURCE = 100_000  # characters of one field's template source

#: What a template version holds besides its key: the members a PUT compares to tell
#: an unchanged template, and those of a template file, in the order pull writes them.
CONTENT_FIELDS = (
    "category",
    "description",
    "default_locale",
    "example_data",
    "example_recipient",
    "locales",
)


def fields_of(channel: str) -> dict[str, bool]:
    """The fields a part for ``channel`` may hold (True: required)."""
    return FIELDS.get(channel, GENERIC_FIELDS)


class TemplateError(Exception):
    """A field that does not compile or render, located: locale, channel, field, line."""

    def __init__(
        self,
        message: str,
        *,
        locale: str | None = None,
        channel: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.locale = locale
        self.channel = channel
        self.field = field
        self.line = line

    @property
    def path(self) -> str:
        """``locales.de.EMAIL.subject``: where in a template's body the fault is."""
        return ".".join(["locales", *(p for p in (self.locale, self.channel, self.field) if p)])

    def __str__(self) -> str:
        where = " ".join(
            p
            for p in (
                f"locale {self.locale}" if self.locale else "",
                self.channel or "",
                self.field or "",
                f"line {self.line}" if self.line else "",
            )
            if p
        )
        return f"{where}: {self.message}" if where else self.message


# ---------------------------------------------------------------- locales


def normalize_locale(value: str) -> str:
    """``de_at`` -> ``de-AT``: the one spelling locales are compared in."""
    parts = value.strip().replace("_", "-").split("-")
    head = parts[0].lower()
    tail = [p.upper() if len(p) == 2 else p.title() if len(p) == 4 else p for p in parts[1:]]
    return "-".join([head, *tail])


def locale_chain(wanted: str | None, default: str) -> list[str]:
    """``de-AT`` -> ``["de-AT", "de", default]``: the order a template's locales are tried."""
    chain: list[str] = []
    if wanted:
        parts = normalize_locale(wanted).split("-")
        chain = ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
    chain.append(normalize_locale(default))
    return list(dict.fromkeys(chain))


def resolve_locale(available: Iterable[str], wanted: str | None, default: str) -> str:
    """The template locale a recipient who speaks ``wanted`` gets (fallback chain, then
    the template's default; case and ``_``/``-`` do not matter)."""
    by_norm = {normalize_locale(a): a for a in available}
    for candidate in locale_chain(wanted, default):
        if candidate in by_norm:
            return by_norm[candidate]
    return default


@functools.lru_cache(maxsize=512)
def _babel_locale(tag: str) -> babel.Locale | None:
    try:
        return babel.Locale.parse(tag.replace("-", "_"))
    except (ValueError, TypeError, babel.UnknownLocaleError):
        return None


def known_locale(tag: str) -> bool:
    """Whether Babel knows ``tag`` (a template's locale must be one)."""
    return _babel_locale(normalize_locale(tag)) is not None


_ENGLISH = babel.Locale.parse("en")


@functools.lru_cache(maxsize=512)
def _zone(name: str | None) -> dt.tzinfo:
    if not name:
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


# ---------------------------------------------------------------- the sandbox


@dataclasses.dataclass(slots=True)
class _RenderState:
    locale: babel.Locale
    tz: dt.tzinfo
    loops_left: int = MAX_LOOP_ITERATIONS


_STATE: contextvars.ContextVar[_RenderState] = contextvars.ContextVar("postbell_template")


def _state() -> _RenderState:
    try:
        return _STATE.get()
    except LookupError:  # compiled but rendered outside render(): English, UTC
        return _RenderState(_ENGLISH, dt.UTC)


def _budgeted(iterable: Any) -> Iterator[Any]:
    state = _state()
    for item in iterable:
        state.loops_left -= 1
        if state.loops_left < 0:
            raise SecurityError(f"loops ran past {MAX_LOOP_ITERATIONS} iterations")
        yield item


def _capped(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_OUTPUT:
        raise SecurityError(f"a string grew past {MAX_OUTPUT} characters")
    return value


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


_PERCENT_WIDTH = re.compile(r"%[-#0 +]*(\d+)|%[-#0 +]*\*")
_FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}]*?(\d+)[^{}]*\}|\{[^{}]*:[^{}]*\{")
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _check_widths(pattern: re.Pattern[str], text: str) -> None:
    for match in pattern.finditer(text):
        digits = match.group(1)
        if digits is None or int(digits) > MAX_WIDTH:
            raise SecurityError(f"a padding width over {MAX_WIDTH} is refused")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with sizes bounded (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and abs(right) > 100 and abs(left) > 1:
                raise SecurityError("an exponent over 100 is refused")
        elif operator == "*":
            count = right if isinstance(right, int) else left if isinstance(left, int) else 0
            if max(_size(left), _size(right)) * abs(count) > MAX_OUTPUT:
                raise SecurityError(f"a repetition past {MAX_OUTPUT} characters is refused")
        elif operator == "+":
            if _size(left) + _size(right) > MAX_OUTPUT:
                raise SecurityError(f"a string grew past {MAX_OUTPUT} characters")
        elif operator == "%" and isinstance(left, str):
            _check_widths(_PERCENT_WIDTH, left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_widths(_FORMAT_WIDTH, value.__self__)
        return wrapped

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, types.BuiltinMethodType) and isinstance(__obj.__self__, str):
            name = __obj.__name__
            if name in _PADDING_METHODS and any(
                isinstance(a, int) and a > MAX_WIDTH for a in (*args, *kwargs.values())
            ):
                raise SecurityError(f"a padding width over {MAX_WIDTH} is refused")
            if name == "replace" and len(args) >= 2:
                _check_replace(__obj.__self__, args[0], args[1])
            if name == "join" and args:
                _check_join(__obj.__self__, args[0])
        return super().call(__context, __obj, *args, **kwargs)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        # Every loop draws on the render's budget; every ~ concatenation is capped.
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_budgeted", [], [], None, None, lineno=loop.lineno)
        for concat in list(tree.find_all(nodes.Concat)):
            concat.nodes = [
                nodes.Filter(n, "_capped", [], [], None, None, lineno=concat.lineno)
                for n in concat.nodes
            ]
        return tree


# ---------------------------------------------------------------- Babel filters


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = dt.datetime.fromtimestamp(value, dt.UTC)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("a value is not an ISO 8601 time") from None
    else:
        raise ValueError(f"a {type(value).__name__} is not a time")
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _as_number(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    raise ValueError("a value is not a number")


def _f_datetime(value: Any, format: str = "medium") -> str:
    state = _state()
    return babel.dates.format_datetime(
        _as_datetime(value), format, tzinfo=state.tz, locale=state.locale
    )


def _f_date(value: Any, format: str = "medium") -> str:
    state = _state()
    if isinstance(value, str) and len(value.strip()) == 10:
        day = dt.date.fromisoformat(value.strip())
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        day = value
    else:
        day = _as_datetime(value).astimezone(state.tz).date()
    return babel.dates.format_date(day, format, locale=state.locale)


def _f_time(value: Any, format: str = "short") -> str:
    state = _state()
    return babel.dates.format_time(
        _as_datetime(value).astimezone(state.tz), format, tzinfo=state.tz, locale=state.locale
    )


def _f_number(value: Any) -> str:
    return babel.numbers.format_decimal(_as_number(value), locale=_state().locale)


def _f_decimal(value: Any, format: str | None = None) -> str:
    return babel.numbers.format_decimal(_as_number(value), format=format, locale=_state().locale)


def _f_percent(value: Any, format: str | None = None) -> str:
    return babel.numbers.format_percent(_as_number(value), format=format, locale=_state().locale)


def _f_currency(value: Any, currency: str = "EUR") -> str:
    return babel.numbers.format_currency(_as_number(value), currency, locale=_state().locale)


def _f_timedelta(value: Any, granularity: str = "second") -> str:
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else _as_number(value)
    return babel.dates.format_timedelta(
        dt.timedelta(seconds=seconds),
        granularity=granularity,  # type: ignore[arg-type]  # Babel checks the name
        locale=_state().locale,
    )


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = text.count(old) if old else len(text) + 1
        if len(text) + count * len(new) > MAX_OUTPUT:
            raise SecurityError(f"a replacement past {MAX_OUTPUT} characters is refused")


def _check_join(separator: Any, items: Any) -> list[Any]:
    listed = list(items)
    if len(str(separator)) * len(listed) > MAX_OUTPUT:
        raise SecurityError(f"a join past {MAX_OUTPUT} characters is refused")
    return listed


@jinja2.pass_eval_context
def _f_replace(eval_ctx: Any, value: str, old: str, new: str, count: int | None = None) -> str:
    _check_replace(str(value), str(old), str(new))
    return str(jinja2.filters.do_replace(eval_ctx, value, old, new, count))


@jinja2.pass_eval_context
def _f_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    return str(jinja2.filters.do_join(eval_ctx, _check_join(d, value), d, attribute))


def _f_center(value: Any, width: int = 80) -> str:
    if width > MAX_WIDTH:
        raise SecurityError(f"a padding width over {MAX_WIDTH} is refused")
    return str(value).center(width)


def _f_format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_widths(_PERCENT_WIDTH, value)
    return jinja2.filters.do_format(value, *args, **kwargs)


def _f_indent(value: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    if isinstance(width, int) and width > MAX_WIDTH:
        raise SecurityError(f"an indent over {MAX_WIDTH} is refused")
    return jinja2.filters.do_indent(value, width, first, blank)


_FILTERS: dict[str, Callable[..., Any]] = {
    "datetime": _f_datetime,
    "date": _f_date,
    "time": _f_time,
    "number": _f_number,
    "decimal": _f_decimal,
    "percent": _f_percent,
    "currency": _f_currency,
    "timedelta": _f_timedelta,
    "center": _f_center,
    "format": _f_format,
    "indent": _f_indent,
    "replace": _f_replace,
    "join": _f_join,
    "_budgeted": _budgeted,
    "_capped": _capped,
}


def _environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=False,
        auto_reload=False,
        cache_size=0,
    )
    env.filters.update(_FILTERS)
    # No "include"/"extends": a template has no loader, so they fail cleanly.
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def autoescaped(channel: str, field: str) -> bool:
    """Only an email's HTML part is autoescaped."""
    return channel == "EMAIL" and field == "html"


# ---------------------------------------------------------------- compiling


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One compiled field and what its output depends on."""

    template: jinja2.Template
    variables: frozenset[str]  # top-level names it reads
    required: frozenset[str]  # of those, the ones used without `is defined` / `default`
    uses_recipient: bool
    uses_locale: bool
    uses_tz: bool


def _line_of(exc: BaseException, name: str) -> int | None:
    lineno = getattr(exc, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    tb = exc.__traceback__
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            found = tb.tb_lineno
        tb = tb.tb_next
    return found


def _optional_names(tree: nodes.Template) -> tuple[set[str], set[str]]:
    """Names tested with ``is defined``/``is undefined`` or given a ``| default``
    anywhere (the author thought of their absence: optional), and the others."""
    guarded: set[str] = set()
    plain: set[str] = set()

    def walk(node: nodes.Node, protected: bool) -> None:
        if isinstance(node, nodes.Name) and node.ctx == "load":
            (guarded if protected else plain).add(node.name)
            return
        if isinstance(node, nodes.Test) and node.name in ("defined", "undefined"):
            walk(node.node, True)
            return
        if isinstance(node, nodes.Filter) and node.name in ("default", "d") and node.node:
            walk(node.node, True)
            for child in [*node.args, *node.kwargs]:
                walk(child, protected)
            return
        for child in node.iter_child_nodes():
            walk(child, protected)

    walk(tree, False)
    return guarded, plain - guarded


@functools.lru_cache(maxsize=4096)
def compile_field(source: str, autoescape: bool, name: str) -> Field:
    """``source`` compiled (cached by source). Raises ``TemplateError`` with the line."""
    if len(source) > MAX_SOURCE:
        raise TemplateError(f"the template is longer than {MAX_SOURCE} characters")
    env = _HTML if autoescape else _PLAIN
    try:
        tree = env.parse(source, name=name, filename=name)
        undeclared = jinja2.meta.find_undeclared_variables(tree)
        _, plain = _optional_names(tree)
        filters = {f.name for f in tree.find_all(nodes.Filter)}
        # The tree holds the budget wrappers (_parse); compiled under ``name``, so an
        # error's traceback names the line of this field.
        code = env.compile(tree, name=name, filename=name)
        template = env.template_class.from_code(env, code, env.make_globals(None), None)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(exc.message or str(exc), line=exc.lineno) from None
    except SecurityError as exc:
        raise TemplateError(str(exc)) from None
    names = frozenset(undeclared) - set(env.globals)
    return Field(
        template=template,
        variables=names,
        required=frozenset(n for n in names if n in plain),
        uses_recipient=bool(names & (RESERVED - {"notification"})),
        uses_locale=bool(filters & (LOCALE_FILTERS | TZ_FILTERS)),
        uses_tz=bool(filters & TZ_FILTERS),
    )


# ---------------------------------------------------------------- a version


@dataclasses.dataclass(frozen=True, slots=True)
class RecipientVars:
    """What a template sees as ``recipient``."""

    external_id: str
    name: str | None = None
    email: str | None = None
    locale: str | None = None
    timezone: str | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "external_id": self.external_id,
            "name": self.name,
            "email": self.email,
            "locale": self.locale,
            "timezone": self.timezone,
            "metadata": dict(self.metadata),
        }


def sample_recipient(locale: str, overrides: Mapping[str, Any] | None = None) -> RecipientVars:
    """The recipient templates are validated and previewed with (``example_recipient``
    of the template overrides its fields)."""
    given = dict(overrides or {})
    return RecipientVars(
        external_id=str(given.get("external_id") or "sample-recipient"),
        name=given.get("name", "Alex Example"),
        email=given.get("email", "alex@example.org"),
        locale=given.get("locale", locale),
        timezone=given.get("timezone", "UTC"),
        metadata=given.get("metadata") or {},
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered part: field name -> text."""

    fields: Mapping[str, str]
    locale: str

    def get(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if value not in (None, "") else None


class Compiled:
    """A template version, every field compiled: render any channel for any recipient.

    ``locales``: ``{"en": {"EMAIL": {"subject": "...", ...}, ...}, ...}``.
    """

    def __init__(self, locales: Mapping[str, Mapping[str, Mapping[str, str]]], default: str):
        self.default_locale = default
        self.locales = locales
        self.parts: dict[tuple[str, str], dict[str, Field]] = {}
        for locale, channels in locales.items():
            for channel, part in channels.items():
                compiled: dict[str, Field] = {}
                for field, source in part.items():
                    name = f"{locale}.{channel}.{field}"
                    try:
                        compiled[field] = compile_field(source, autoescaped(channel, field), name)
                    except TemplateError as exc:
                        raise TemplateError(
                            exc.message, locale=locale, channel=channel, field=field, line=exc.line
                        ) from None
                self.parts[(locale, channel)] = compiled

    def channels(self, locale: str) -> list[str]:
        return [c for (loc, c) in self.parts if loc == locale]

    def part_channel(self, locale: str, channel: str) -> str | None:
        """The part ``channel`` renders from in ``locale``: its own, else IN_APP's."""
        if (locale, channel) in self.parts:
            return channel
        if channel != "EMAIL" and (locale, "IN_APP") in self.parts:
            return "IN_APP"
        return None

    def locale_for(self, wanted: str | None, channel: str) -> str:
        """The recipient's locale in this template: the fallback chain, among the
        locales that have something for ``channel`` (else the default)."""
        usable = [loc for loc in self.locales if self.part_channel(loc, channel)]
        return resolve_locale(usable, wanted, self.default_locale)

    def required_data(self) -> list[str]:
        names: set[str] = set()
        for part in self.parts.values():
            for field in part.values():
                names |= field.required
        return sorted(names - RESERVED)

    def uses_recipient(self, channel: str) -> bool:
        """Whether any locale's ``channel`` part depends on the recipient (its fields,
        unsubscribe link, or locale/timezone-formatted values)."""
        for locale in self.locales:
            source = self.part_channel(locale, channel)
            if source is None:
                continue
            for field in self.parts[(locale, source)].values():
                if field.uses_recipient or field.uses_locale:
                    return True
        return False

    def cache_key(self, channel: str, recipient: RecipientVars) -> tuple[Any, ...]:
        """Renders with equal keys are equal: render once per key (per version, locale
        and channel when nothing of the recipient shows, else per recipient)."""
        locale = self.locale_for(recipient.locale, channel)
        source = self.part_channel(locale, channel)
        key: tuple[Any, ...] = (locale, channel)
        if source is None:
            return key
        fields = self.parts[(locale, source)].values()
        if any(f.uses_recipient for f in fields):
            return (*key, "r", recipient.external_id)
        if any(f.uses_locale for f in fields):
            key = (*key, recipient.locale)
        if any(f.uses_tz for f in fields):
            key = (*key, recipient.timezone)
        return key

    def render(
        self,
        channel: str,
        recipient: RecipientVars,
        data: Mapping[str, Any],
        notification: Mapping[str, Any] | None = None,
        unsubscribe_url: str | None = None,
        locale: str | None = None,
    ) -> Rendered:
        """Render ``channel``'s part for ``recipient`` (in ``locale`` when given, else
        the recipient's through the fallback chain). Raises ``TemplateError``."""
        chosen = locale or self.locale_for(recipient.locale, channel)
        source = self.part_channel(chosen, channel)
        if source is None:
            raise TemplateError(
                f"the template has no {channel} part (nor IN_APP) in this locale",
                locale=chosen,
                channel=channel,
            )
        fmt = (
            _babel_locale(normalize_locale(recipient.locale or chosen))
            or _babel_locale(normalize_locale(chosen))
            or _ENGLISH
        )
        variables: dict[str, Any] = {
            **{k: v for k, v in data.items() if k not in RESERVED},
            "recipient": recipient.as_dict(),
            "notification": dict(notification or {}),
        }
        if channel == "EMAIL":
            variables["unsubscribe_url"] = unsubscribe_url or ""
        out: dict[str, str] = {}
        token = _STATE.set(_RenderState(fmt, _zone(recipient.timezone)))
        try:
            for field, compiled in self.parts[(chosen, source)].items():
                if source != channel and field not in fields_of(channel):
                    continue
                out[field] = _render_field(compiled, variables, chosen, channel, field)
                _STATE.get().loops_left = MAX_LOOP_ITERATIONS
        finally:
            _STATE.reset(token)
        if channel == "EMAIL" and not out.get("text") and out.get("html"):
            out["text"] = html_to_text(out["html"])
        link = out.get("action_url")
        if link and not link.startswith(("https://", "http://")):
            raise TemplateError(
                "action_url must render to an http(s) URL",
                locale=chosen,
                channel=source,
                field="action_url",
            )
        return Rendered(out, chosen)


def _render_field(
    compiled: Field, variables: Mapping[str, Any], locale: str, channel: str, field: str
) -> str:
    name = f"{locale}.{channel}.{field}"
    try:
        text = _generate(compiled, variables)
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            exc.message or "undefined variable",
            locale=locale,
            channel=channel,
            field=field,
            line=_line_of(exc, name),
        ) from None
    except RecursionError:
        raise TemplateError(
            "recursion too deep", locale=locale, channel=channel, field=field
        ) from None
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, SecurityError):
            message = f"refused: {message}"
        raise TemplateError(
            message[:300], locale=locale, channel=channel, field=field, line=_line_of(exc, name)
        ) from None
    return text


def _generate(compiled: Field, variables: Mapping[str, Any]) -> str:
    """The field's output, stopped once it grows past ``MAX_OUTPUT``."""
    pieces: list[str] = []
    size = 0
    for piece in compiled.template.generate(variables):
        size += len(piece)
        if size > MAX_OUTPUT:
            raise SecurityError(f"the output grew past {MAX_OUTPUT} characters")
        pieces.append(piece)
    return "".join(pieces).strip()


def render_text(source: str, variables: Mapping[str, Any], name: str) -> str:
    """One plain-text field outside a template version (a workflow step's message
    fields): the same sandbox and limits, no autoescape, English and UTC for the
    Babel filters. Raises ``TemplateError`` naming ``name`` as the field."""
    compiled = compile_field(source, False, name)
    token = _STATE.set(_RenderState(_ENGLISH, dt.UTC))
    try:
        try:
            text = _generate(compiled, variables)
        except jinja2.UndefinedError as exc:
            raise TemplateError(exc.message or "undefined variable", field=name) from None
        except RecursionError:
            raise TemplateError("recursion too deep", field=name) from None
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            if isinstance(exc, SecurityError):
                message = f"refused: {message}"
            raise TemplateError(message[:300], field=name) from None
    finally:
        _STATE.reset(token)
    return text


# ---------------------------------------------------------------- validation


def check_shape(
    locales: Mapping[str, Mapping[str, Mapping[str, str]]],
    default_locale: str,
    channels: Iterable[str] = CHANNELS,
) -> None:
    """Locales Babel knows, the default among them, known channels and their fields,
    required fields present. Raises ``TemplateError`` naming the place."""
    known = set(channels)
    if not locales:
        raise TemplateError("a template needs at least one locale")
    if default_locale not in locales:
        raise TemplateError(f"default_locale {default_locale!r} is not one of the locales")
    for locale, parts in locales.items():
        if not known_locale(locale):
            raise TemplateError("not a locale Babel knows (e.g. en, de, de-AT)", locale=locale)
        if not parts:
            raise TemplateError("the locale has no channel part", locale=locale)
        for channel, part in parts.items():
            if channel not in known:
                raise TemplateError("unknown channel", locale=locale, channel=channel)
            allowed = fields_of(channel)
            for field in part:
                if field not in allowed:
                    raise TemplateError(
                        f"unknown field; {channel} takes {', '.join(allowed)}",
                        locale=locale,
                        channel=channel,
                        field=field,
                    )
            for field, required in allowed.items():
                if required and not str(part.get(field) or "").strip():
                    raise TemplateError(
                        "required field missing", locale=locale, channel=channel, field=field
                    )
    # The default locale is where every fallback chain ends: it covers every channel.
    fallback = locales[default_locale]
    for locale, parts in locales.items():
        for channel in parts:
            if channel not in fallback and (channel == "EMAIL" or "IN_APP" not in fallback):
                raise TemplateError(
                    f"the default locale {default_locale} has no {channel} part "
                    "(every fallback chain ends there)",
                    locale=locale,
                    channel=channel,
                )


def validate(
    locales: Mapping[str, Mapping[str, Mapping[str, str]]],
    default_locale: str,
    example_data: Mapping[str, Any],
    example_recipient: Mapping[str, Any] | None = None,
) -> Compiled:
    """Compile every field and render every locale x channel against ``example_data``
    and a sample recipient. Answers the compiled version; raises ``TemplateError``
    naming the locale, channel, field and line of the first fault."""
    check_shape(locales, default_locale)
    for key in example_data:
        if key in RESERVED:
            raise TemplateError(f"example_data may not use the reserved name {key!r}")
    compiled = Compiled(locales, default_locale)
    notification = {"id": "00000000-0000-0000-0000-000000000000", "category": None}
    notification["priority"] = "normal"
    for locale, parts in locales.items():
        recipient = sample_recipient(locale, example_recipient)
        for channel in parts:
            compiled.render(
                channel,
                recipient,
                example_data,
                notification,
                unsubscribe_url="https://example.org/unsubscribe",
                locale=locale,
            )
    return compiled


def missing_data(required: Iterable[str], data: Mapping[str, Any]) -> str | None:
    """The first required data key ``data`` lacks, else None."""
    for name in sorted(required):
        if name not in data:
            return name
    return None


# ---------------------------------------------------------------- HTML -> text


class _TextWriter(HTMLParser):
    BLOCKS = frozenset(
        {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "tr", "blockquote"}
    )
    SKIP = frozenset({"style", "script", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.links: list[str | None] = []
        self.link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag in self.BLOCKS:
            self.out.append("\n\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag == "a":
            self.links.append(dict(attrs).get("href"))
            self.link_text.append("".join(self.out))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n\n")
        elif tag == "a" and self.links:
            href = self.links.pop()
            before = self.link_text.pop()
            label = "".join(self.out)[len(before) :].strip()
            if href and href.startswith(("http://", "https://", "mailto:")) and href != label:
                self.out.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(re.sub(r"[ \t\r\n\f]+", " ", data))  # keep no-break spaces


def html_to_text(markup: str) -> str:
    """A readable plain-text version of an HTML email: paragraphs and line breaks
    kept, links as ``label (url)``, tags and scripts dropped, entities decoded."""
    writer = _TextWriter()
    writer.feed(markup)
    writer.close()
    text = "".join(writer.out)
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class CompiledCache:
    """Compiled versions by (key, version), least recently used out first. A
    version never changes once saved, so an entry never goes stale."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: collections.OrderedDict[tuple[str, int], Compiled] = collections.OrderedDict()

    def get(self, key: str, version: int) -> Compiled | None:
        found = self._items.get((key, version))
        if found is not None:
            self._items.move_to_end((key, version))
        return found

    def put(
        self,
        key: str,
        version: int,
        locales: Mapping[str, Mapping[str, Mapping[str, str]]],
        default_locale: str,
    ) -> Compiled:
        compiled = Compiled(locales, default_locale)
        self._items[(key, version)] = compiled
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return compiled


#: The process's compiled versions (API and workers each have their own).
CACHE = CompiledCache()
