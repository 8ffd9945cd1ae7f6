"""The steps of a workflow: their shapes, their rules, and what they read from a run.

The API validates a workflow's steps with these Structs and the rules in ``check``
before it stores a version; the workers decode the stored steps with the same
Structs to advance runs. No HTTP here, no database.

Durations are ``<n><unit>`` parts, units ``s m h d`` (``90s``, ``15m``, ``1h30m``,
``7d``); an offset may start with ``-`` or ``+``. A data path is ``data.`` followed
by dot-separated names (``data.event.starts_at``), read from the trigger's data.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

import msgspec

from postbell.app.core import templates
from postbell.app.core.channels import ChannelName
from postbell.app.core.errors import Invalid

LINE = r"^[^\x00-\x1f\x7f]*$"
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_DURATION_RE = re.compile(r"(\d{1,9})(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATH_RE = re.compile(r"data(\.[A-Za-z0-9_-]{1,100}){1,10}")
#: The longest wait a step may name: longer is a typo, not a plan.
MAX_SECONDS = 366 * 86400
MAX_STEPS = 50
#: The NOTIFY channel that wakes the workflow engine (postbell.trigger in SQL, and
#: the API's Waker, send on it; each engine LISTENs).
WAKEUP_CHANNEL = "postbell_workflows"

Duration = Annotated[str, msgspec.Meta(min_length=2, max_length=40, pattern=r"^[+-]?[0-9smhd]+$")]
#: A digest window: a duration, or ``preference`` (the recipient's digest frequency).
Window = Annotated[
    str, msgspec.Meta(min_length=2, max_length=40, pattern=r"^([0-9smhd]+|preference)$")
]
#: What a send step's fields and templates see besides the trigger's data.
WORKFLOW_VARIABLES = frozenset({"events", "count"})
#: The events a digest hands its templates and message fields (``count`` is all).
MAX_EVENTS = 100
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
DataPath = Annotated[str, msgspec.Meta(min_length=6, max_length=400, pattern=LINE)]
StepTitle = Annotated[str, msgspec.Meta(max_length=300, pattern=LINE)]
StepBody = Annotated[str, msgspec.Meta(min_length=1, max_length=20_000, pattern=TEXT)]
StepUrl = Annotated[str, msgspec.Meta(max_length=2048, pattern=LINE)]
StepKey = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]


class DigestSetting(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A digest frequency: ``off`` (each event goes on at once), ``hourly``, ``daily``
    (at ``hour`` o'clock in the recipient's timezone) or ``weekly`` (at ``hour`` on
    ``weekday``). A recipient's choice per category, or a digest step's default."""

    frequency: Literal["off", "hourly", "daily", "weekly"]
    hour: Annotated[int, msgspec.Meta(ge=0, le=23)] = 9
    weekday: Weekday = "monday"


#: A digest step's default frequency when the recipient chose none.
DEFAULT_SETTING = DigestSetting(frequency="daily")


class Condition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """When a step runs. ``in_app``: the run's latest earlier IN_APP item is still
    unread / unseen / not archived. ``path`` + ``equals``: the trigger's data holds
    exactly that value there. Several given: all must hold."""

    in_app: Literal["unread", "unseen", "not_archived"] | None = None
    path: DataPath | None = None
    equals: Any = msgspec.UNSET


class StepVariant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One arm of a send step's A/B experiment (docs/experiments.md): its own text, or
    a ``template`` (pinned by each trigger, like the step's)."""

    name: StepKey
    weight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    title: StepTitle | None = None
    body: StepBody | None = None
    action_url: StepUrl | None = None
    template: StepKey | None = None


class SendStep(
    msgspec.Struct,
    tag="send",
    tag_field="type",
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
):
    """An ordinary notification to the run's recipient: preferences, quiet hours,
    priorities, fallbacks and the category's rate limits apply. Its text is either
    ``template`` (rendered with the run's data, ``events`` and ``count``, at the
    version the trigger pinned) or the message fields (``title``, ``message``: Jinja2
    in the same sandbox, with the same variables, rendered by the engine)."""

    channels: Annotated[list[ChannelName], msgspec.Meta(min_length=1)] | None = None
    title: StepTitle | None = None
    message: StepBody | None = None
    body: StepBody | None = None
    action_url: StepUrl | None = None
    metadata: dict[str, Any] | None = None
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    fallback: dict[ChannelName, ChannelName] | None = None
    #: A template's key (docs/templates.md) instead of the message fields.
    template: StepKey | None = None
    #: An A/B experiment: each recipient gets one of ``variants`` (docs/experiments.md).
    experiment: StepKey | None = None
    variants: Annotated[list[StepVariant], msgspec.Meta(min_length=2, max_length=10)] | None = None
    if_: Condition | None = msgspec.field(default=None, name="if")


class DelayStep(
    msgspec.Struct,
    tag="delay",
    tag_field="type",
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
):
    """Wait ``for`` a duration, or ``until`` the time a data path holds plus ``offset``
    (``-1h``: an hour before). A time already past continues at once."""

    for_: Duration | None = msgspec.field(default=None, name="for")
    until: DataPath | None = None
    offset: Duration | None = None


class DigestStep(
    msgspec.Struct,
    tag="digest",
    tag_field="type",
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
):
    """Collect this step's runs for one recipient and ``key`` (a data path; none: all
    of them) into one digest. It fires once ``window`` has passed without a new
    event, and at the latest ``max_wait`` after its first (default: ``window``, a
    fixed window). The run of its first event goes on; the others end ``done``.

    ``window: preference`` follows the recipient's digest frequency for the
    workflow's category (``default`` when they chose none): off, hourly, or the next
    delivery hour in their timezone, capped by ``max_wait`` when given."""

    window: Window
    key: DataPath | None = None
    max_wait: Duration | None = None
    #: with ``window: preference``: the frequency of recipients who chose none
    default: DigestSetting | None = None


class ThrottleStep(
    msgspec.Struct,
    tag="throttle",
    tag_field="type",
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
):
    """At most ``limit`` runs per recipient (and ``key``, a data path) pass in any
    ``per``; the others end ``throttled``."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    per: Duration
    key: DataPath | None = None


Step = SendStep | DelayStep | DigestStep | ThrottleStep


def seconds(value: str, field: str, *, signed: bool = False) -> int:
    """``value`` as seconds; ``Invalid`` naming ``field`` when it is not a duration."""
    sign = 1
    text = value
    if signed and text[:1] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise Invalid(f"{field}: give a duration like 90s, 15m, 1h30m or 7d", field=field)
    total = sum(int(n) * _UNITS[u] for n, u in parts)
    if total > MAX_SECONDS:
        raise Invalid(f"{field}: at most 366 days", field=field)
    if total == 0 and not signed:
        raise Invalid(f"{field}: must be more than zero", field=field)
    return sign * total


def data_path(value: str, field: str) -> list[str]:
    if not _PATH_RE.fullmatch(value):
        raise Invalid(
            f"{field}: give a path into the trigger's data, like data.thread_id", field=field
        )
    return value.split(".")[1:]


def read_path(data: Any, path: str) -> Any:
    """The value at ``path`` (``data.a.b``) in ``data``; None where it is missing."""
    value = data
    for name in path.split(".")[1:]:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _experiment(step: SendStep, at: str) -> None:
    """A send step's experiment: the notifications' rules (key and variants together,
    unique names, each variant its own title or body, or a template; with a step
    template, a variant with neither shows it)."""
    if step.experiment is None and step.variants is None:
        return
    if step.experiment is None:
        raise Invalid(
            f"{at}.experiment: 'variants' go with an 'experiment' key", field=f"{at}.experiment"
        )
    if not step.variants:
        raise Invalid(
            f"{at}.variants: an experiment needs 'variants' (two to ten)", field=f"{at}.variants"
        )
    names: set[str] = set()
    for index, variant in enumerate(step.variants):
        where = f"{at}.variants[{index}]"
        if variant.name in names:
            raise Invalid(
                f"{where}.name: variant name {variant.name!r} is used twice", field=f"{where}.name"
            )
        names.add(variant.name)
        has_text = variant.title is not None or bool(variant.body and variant.body.strip())
        if variant.template is not None:
            if has_text or variant.body is not None or variant.action_url is not None:
                raise Invalid(
                    f"{where}.template: give a variant either a 'template' or its own text,"
                    " not both",
                    field=f"{where}.template",
                )
        elif step.template is None and not has_text:
            raise Invalid(
                f"{where}.body: a variant needs its own 'title' or 'body' (or a 'template')",
                field=f"{where}.body",
            )
        elif step.template is not None and has_text and not (variant.body or "").strip():
            raise Invalid(
                f"{where}.body: a text variant of a templated step needs its own 'body'",
                field=f"{where}.body",
            )


def check(steps: list[Step], category: str | None = None) -> None:
    """The rules beyond the types; ``Invalid`` naming ``steps[i].<field>``. Templates
    are checked against the database by the caller (``templates_named``)."""
    if not steps:
        raise Invalid("a workflow needs at least one step", field="steps")
    if len(steps) > MAX_STEPS:
        raise Invalid(f"a workflow has at most {MAX_STEPS} steps", field="steps")
    in_app_before = False
    sends = 0
    for index, step in enumerate(steps):
        at = f"steps[{index}]"
        if isinstance(step, SendStep):
            sends += 1
            _experiment(step, at)
            if step.template is not None:
                for name in ("title", "message", "body", "action_url"):
                    if getattr(step, name) is not None:
                        raise Invalid(
                            f"{at}.{name}: give either 'template' or message fields, not both:"
                            " the template has the text",
                            field=f"{at}.{name}",
                        )
            else:
                if step.message is not None and step.body is not None:
                    raise Invalid(
                        f"{at}.body: give either 'message' or 'body', not both",
                        field=f"{at}.body",
                    )
                text = step.message if step.message is not None else step.body
                variant_templates = any(v.template for v in step.variants or ())
                if text is None and step.variants:
                    # the variants carry the text: the first variant's body stands in
                    text = next((v.body for v in step.variants if v.body and v.body.strip()), None)
                if (text is None or not text.strip()) and not variant_templates:
                    raise Invalid(
                        f"{at}.message: a send step needs a 'message' (or 'body', or a 'template')",
                        field=f"{at}.message",
                    )
                for name in ("title", "message", "body"):
                    source = getattr(step, name)
                    if source is not None:
                        try:
                            templates.compile_field(source, False, f"{at}.{name}")
                        except templates.TemplateError as exc:
                            raise Invalid(f"{at}.{name}: {exc}", field=f"{at}.{name}") from None
            for first, second in (step.fallback or {}).items():
                if first == second:
                    raise Invalid(
                        f"{at}.fallback.{first}: a channel cannot fall back to itself",
                        field=f"{at}.fallback.{first}",
                    )
            if step.if_ is not None:
                _condition(step.if_, f"{at}.if", in_app_before)
            # channels left to the category's defaults may well hold IN_APP
            in_app_before = in_app_before or step.channels is None or "IN_APP" in step.channels
        elif isinstance(step, DelayStep):
            if (step.for_ is None) == (step.until is None):
                raise Invalid(
                    f"{at}.for: give either 'for' (a duration) or 'until' (a data path)",
                    field=f"{at}.for",
                )
            if step.for_ is not None:
                seconds(step.for_, f"{at}.for")
                if step.offset is not None:
                    raise Invalid(f"{at}.offset: an offset goes with 'until'", field=f"{at}.offset")
            if step.until is not None:
                data_path(step.until, f"{at}.until")
            if step.offset is not None:
                seconds(step.offset, f"{at}.offset", signed=True)
        elif isinstance(step, DigestStep):
            if step.key is not None:
                data_path(step.key, f"{at}.key")
            if step.window == "preference":
                if category is None:
                    raise Invalid(
                        f"{at}.window: 'preference' follows the recipients' digest frequency"
                        " for the workflow's category: give the workflow a category",
                        field=f"{at}.window",
                    )
                if step.max_wait is not None:
                    seconds(step.max_wait, f"{at}.max_wait")
                continue
            if step.default is not None:
                raise Invalid(
                    f'{at}.default: a default frequency goes with "window": "preference"',
                    field=f"{at}.default",
                )
            window = seconds(step.window, f"{at}.window")
            if step.max_wait is not None and seconds(step.max_wait, f"{at}.max_wait") < window:
                raise Invalid(f"{at}.max_wait: must be at least the window", field=f"{at}.max_wait")
        elif isinstance(step, ThrottleStep):
            seconds(step.per, f"{at}.per")
            if step.key is not None:
                data_path(step.key, f"{at}.key")
    if not sends:
        raise Invalid("a workflow needs at least one send step", field="steps")


def _condition(condition: Condition, at: str, in_app_before: bool) -> None:
    if condition.in_app is None and condition.path is None:
        raise Invalid(f"{at}: give 'in_app' or 'path' with 'equals'", field=at)
    if condition.in_app is not None and not in_app_before:
        raise Invalid(
            f"{at}.in_app: no earlier send step names IN_APP in its channels", field=f"{at}.in_app"
        )
    if condition.path is not None:
        data_path(condition.path, f"{at}.path")
        if condition.equals is msgspec.UNSET:
            raise Invalid(f"{at}.equals: a 'path' condition needs 'equals'", field=f"{at}.equals")
    elif condition.equals is not msgspec.UNSET:
        raise Invalid(f"{at}.path: 'equals' needs a 'path'", field=f"{at}.path")


def decode(raw: bytes | list[Any]) -> list[Step]:
    """Stored steps (JSON text or decoded JSON) as Structs."""
    if isinstance(raw, (bytes, str)):
        return msgspec.json.decode(raw, type=list[Step])
    return msgspec.convert(raw, list[Step])


def delay_until(step: DelayStep, data: Any, now: dt.datetime) -> dt.datetime | str:
    """When a delay step ends for a run with ``data``; a text saying why not when its
    ``until`` path holds no time."""
    if step.for_ is not None:
        return now + dt.timedelta(seconds=seconds(step.for_, "for"))
    assert step.until is not None
    value = read_path(data, step.until)
    if not isinstance(value, str):
        return f"{step.until} holds no time"
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        return f"{step.until} is not an RFC 3339 time"
    if at.tzinfo is None:
        return f"{step.until} has no UTC offset"
    if step.offset is not None:
        at += dt.timedelta(seconds=seconds(step.offset, "offset", signed=True))
    return at


def key_of(path: str | None, data: Any) -> str:
    """A digest or throttle key: the JSON text of the value at ``path`` ('' without a
    path; ``null`` where the data has none)."""
    if path is None:
        return ""
    return msgspec.json.encode(read_path(data, path)).decode()


def template_keys(steps: list[Step]) -> list[str]:
    """The templates a workflow's send steps (and their experiments' variants) name,
    each once, in step order."""
    keys: list[str] = []
    for step in steps:
        if isinstance(step, SendStep):
            keys += [step.template] if step.template else []
            keys += [v.template for v in step.variants or () if v.template]
    return list(dict.fromkeys(keys))


def wakes(steps: list[Step]) -> bool:
    """Whether a new run's first step may send at once (anything but a digest or a
    fixed delay): then a trigger wakes the engine instead of waiting for its poll.
    postbell.trigger() in SQL decides the same (migration 0017)."""
    first = steps[0]
    return not (
        isinstance(first, DigestStep) or (isinstance(first, DelayStep) and first.for_ is not None)
    )


def variables(data: Any, events: list[Any], count: int) -> dict[str, Any]:
    """What a send step's template or message fields render with: the run's trigger
    data, ``events`` (each digested trigger's data, in order; the run's own without
    a digest) and ``count`` (how many events; 1 without a digest). ``events`` and
    ``count`` hide data keys of the same names."""
    return {**(data if isinstance(data, dict) else {}), "events": events, "count": count}
