"""The one list of channel names, and the queue each one's jobs run on.

Everything else derives from here: the API's enums, the settings' per-channel
variables, the worker's queues, the channel registry (which must have a plugin for
each name) and the check in SQL ``postbell.notify()`` (a test holds them together).
"""

from __future__ import annotations

from typing import Literal, get_args

ChannelName = Literal[
    "IN_APP",
    "EMAIL",
    "PUSH",
    "SMS",
    "WEBHOOK",
    "SLACK",
    "DISCORD",
    "WHATSAPP",
    "TELEGRAM",
    "TEAMS",
    "APPRISE",
]
CHANNELS: tuple[ChannelName, ...] = get_args(ChannelName)

#: The queue of routing jobs; every channel has a queue of its own, its name in
#: lower case ("email", "push", ...; deliver_job() in SQL agrees).
ROUTE_QUEUE = "route"
QUEUES: tuple[str, ...] = (ROUTE_QUEUE, *(name.lower() for name in CHANNELS))


def queue_of(channel: str) -> str:
    """The queue that carries ``channel``'s deliver jobs."""
    return channel.lower()


def parse_channel(value: str) -> ChannelName | None:
    """``value`` as a channel name, case-insensitively; None when it is none."""
    upper = value.strip().upper()
    for name in CHANNELS:
        if name == upper:
            return name
    return None


def unknown_channel(value: str) -> str:
    """The one wording for a channel name that is none (API and CLI alike)."""
    return f"unknown channel {value!r}; one of {', '.join(CHANNELS)}"
