"""
The Host check: what keeps a web page from reading the daemon through DNS rebinding.

A page on ``attacker.example`` whose name is rebound to 127.0.0.1 makes same-origin requests:
they carry ``Host: attacker.example:12434`` and, for a GET, no ``Origin``, so CORS never sees
them.  So a connection that arrived at a loopback address is answered only when its ``Host``
names loopback (``localhost``, a loopback IP literal such as ``127.0.0.1`` or ``[::1]``, with or
without a port), a name under ``.localhost`` or ``.docker.internal`` (``BUILTIN_SUFFIXES``) or a
name in ``server.allowed_hosts`` (Ollama's fix for CVE-2024-28224).

A connection that arrived at any other address (``server.host`` beyond loopback) is guarded by
the API keys, which a page cannot know; there the check applies only once ``allowed_hosts`` is
set, and then also admits IP literals (a rebound name never arrives as one).  The Unix socket is
not checked: no page can reach it, and Docker's own clients send Hosts of their own through it.

A request with no ``Host`` at all (HTTP/1.0: HTTP/1.1 without one is a parser error) did not
come from a browser, which always sends one.  Pure: both lanes call it with what they parsed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

LOOPBACK_NAMES = frozenset(("localhost",))
# Names no page of an attacker's can carry: ``*.localhost`` browsers resolve to loopback
# themselves (RFC 6761), and ``*.docker.internal`` (``host.docker.internal``: how Docker
# Desktop's containers reach this machine, arriving on its loopback) is never delegated by
# public DNS.  Always served, as the loopback names are.
BUILTIN_SUFFIXES = (".localhost", ".docker.internal")
CACHE_MAX = 256


def host_name(host: str) -> str | None:
    """The name in a ``Host`` value, lower-cased, without its port and an IPv6 literal's
    brackets; None when it is not a host (and an optional port) at all."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        if end < 0 or ":" not in name:
            return None
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    if not name or any(c in name for c in "/\\@ \t"):
        return None
    return name


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback_name(name: str) -> bool:
    """``localhost`` (or a built-in name, ``BUILTIN_SUFFIXES``) or a loopback IP literal."""
    if name in LOOPBACK_NAMES or name.endswith(BUILTIN_SUFFIXES):
        return True
    ip = _ip(name)
    return ip is not None and ip.is_loopback


def matches(name: str, allowed: Sequence[str]) -> bool:
    """*name* is in *allowed*: exact names, ``.example.com``/``*.example.com`` for a domain and
    its subdomains, ``*`` for any name."""
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == "*" or entry == name:
            return True
        suffix = entry.removeprefix("*")
        if suffix.startswith(".") and (name.endswith(suffix) or name == suffix[1:]):
            return True
    return False


def arrived_at_loopback(sockname: object) -> bool | None:
    """Whether a connection's local address (``get_extra_info("sockname")``) is loopback;
    None for a Unix socket (its path: no check).  Unknown (the transport is gone) counts as
    loopback: when in doubt, check."""
    if isinstance(sockname, (str, bytes)):
        return None
    if not isinstance(sockname, tuple) or not sockname:
        return True
    ip = _ip(str(sockname[0]).split("%", 1)[0])
    if ip is None:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class HostPolicy:
    """The Host values a connection may send; verdicts cached per distinct value (clients
    send the same one again and again), recomputed when ``allowed_hosts`` changes (a reload)."""

    def __init__(self, allowed: Callable[[], Sequence[str]]) -> None:
        self._read = allowed
        self._allowed: tuple[str, ...] = ()
        self._verdicts: dict[tuple[str, bool], bool] = {}

    def allows(self, host: str | None, *, loopback: bool | None) -> bool:
        """Whether a request with *host* may be served on a connection that arrived at a
        loopback address (*loopback* True), another address (False) or the socket (None)."""
        if loopback is None or host is None:
            return True
        allowed = tuple(self._read())
        if allowed != self._allowed:
            self._allowed = allowed
            self._verdicts.clear()
        key = (host, loopback)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._decide(host, loopback, allowed)
            if len(self._verdicts) >= CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    @staticmethod
    def _decide(host: str, loopback: bool, allowed: tuple[str, ...]) -> bool:
        name = host_name(host)
        if name is None:
            return False
        if is_loopback_name(name) or matches(name, allowed):
            return True
        if loopback:
            return False
        return not allowed or _ip(name) is not None

    def names_daemon(self, host: str) -> bool:
        """Whether *host* is one of the daemon's own names (loopback, an IP literal or an
        allowed host): a page served from it is the daemon's own origin, not a cross-site one."""
        name = host_name(host)
        if name is None:
            return False
        return is_loopback_name(name) or _ip(name) is not None or matches(name, self._read())


def refusal_message(host: str) -> str:
    """Why a Host is refused, and what to do about it."""
    shown = host if len(host) <= 100 else host[:100] + "…"
    return (
        f"Host {shown!r} is not allowed: over loopback this daemon answers only requests to "
        "localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding); add the name to "
        "server.allowed_hosts to allow it"
    )
