"""The outbound address guard (SSRF): which hosts a recipient-supplied URL may reach.

Webhook, Slack and Discord URLs come from recipients (through the host app): without
a guard, a URL could make postbell's workers call its own database, a cloud
metadata service or anything else on the private network. Two checks, one rule:

* at the API, ``refusal(url)`` reads the host the way the HTTP client will (yarl's
  IDNA/UTS-46 normalisation: ``127。0。0。1`` and fullwidth digits are 127.0.0.1; the
  IPv4 forms ``getaddrinfo`` accepts: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
  ``127.1``) and refuses loopback, private, link-local and other non-public targets;
* at send time, ``check_connect(ip, port)`` runs for every connection the HTTP client
  opens, on the address it actually connects to, so a DNS name that resolves to a
  private address (or an IP literal stored past the API) is refused too.

``POSTBELL_WEBHOOK_ALLOW_PRIVATE=1`` turns both off (local setups, tests that need
it); ``POSTBELL_WEBHOOK_ALLOW_ADDRESSES`` allows exact private addresses (an
internal receiver, or a test's own) while keeping the guard on for everything else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterable

import yarl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateAddressError(OSError):
    """The URL's host is, or resolves to, an address postbell refuses to call."""


def is_public(address: str | IPAddress) -> bool:
    """An IP address anyone on the internet could reach (not loopback, private, ...)."""
    ip = address if not isinstance(address, str) else ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def host_of(url: str) -> str | None:
    """The host ``url`` connects to, normalised as the HTTP client does (lower case,
    IDNA/UTS-46, no trailing dot); None when the URL has none or cannot be read."""
    try:
        host = yarl.URL(url).host
    except (ValueError, UnicodeError):
        return None
    return host.rstrip(".").lower() if host else None


def ip_of(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one in any form a resolver accepts:
    standard IPv4/IPv6, or the legacy IPv4 forms (decimal, octal, hex, short)."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        pass
    try:
        # inet_aton reads exactly the forms getaddrinfo resolves without DNS.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_local_name(host: str) -> bool:
    return host in ("localhost", "localhost.localdomain") or host.endswith(".localhost")


@dataclasses.dataclass(frozen=True, slots=True)
class AddressGuard:
    """The rule for recipient-supplied URLs: public addresses only, unless allowed."""

    allow_private: bool = False
    #: exact (ip, port) pairs allowed although private; port None: any port
    allowed: frozenset[tuple[IPAddress, int | None]] = frozenset()

    @classmethod
    def from_entries(cls, allow_private: bool, entries: Iterable[str]) -> AddressGuard:
        """Entries like ``10.0.0.5``, ``10.0.0.5:8443`` or ``[fd00::1]:443``."""
        allowed = set()
        for entry in entries:
            host, port = _split_host_port(entry)
            ip = ip_of(host)
            if ip is None:
                raise ValueError(f"{entry!r} is not an IP address (with an optional :port)")
            allowed.add((ip, port))
        return cls(allow_private, frozenset(allowed))

    def _allowed(self, ip: IPAddress, port: int | None) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return (ip, port) in self.allowed or (ip, None) in self.allowed

    def refusal(self, url: str) -> str | None:
        """Why ``url`` is refused as a webhook target, or None (DNS names pass here:
        the address they resolve to is checked at connect time)."""
        host = host_of(url)
        if host is None:
            return "has no host postbell can read"
        if self.allow_private:
            return None
        try:
            port = yarl.URL(url).port
        except ValueError:
            return "has an invalid port"
        ip = ip_of(host)
        if ip is not None:
            if is_public(ip) or self._allowed(ip, port):
                return None
            return "points at a private or loopback address"
        if _is_local_name(host):
            return "points at this machine"
        return None

    def check_connect(self, address: str, port: int) -> None:
        """Raise ``PrivateAddressError`` unless connecting to ``address:port`` is allowed."""
        if self.allow_private:
            return
        ip = ipaddress.ip_address(address.split("%")[0])
        if not (is_public(ip) or self._allowed(ip, port)):
            raise PrivateAddressError(f"refused to connect to a private address ({ip})")


def _split_host_port(entry: str) -> tuple[str, int | None]:
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port)
    return entry, None
