"""Two checks that keep a web page from spending the gateway's provider credits through a visitor's browser.

An open gateway on 127.0.0.1 can be reached by any page its user opens, in two ways:

* **Cross-site "simple" requests.** A page may POST a form, or ``fetch`` a
  ``text/plain`` body, to any origin without a CORS preflight: the browser
  sends the request and only hides the answer. Every POST endpoint here takes
  JSON, so a POST must declare ``Content-Type: application/json``, which a page
  can send to another origin only after a preflight, and CORS is off unless
  ``server.cors_origins`` names that page's origin. Otherwise: 415.
* **DNS rebinding.** A page on ``evil.example`` makes its own name resolve to
  127.0.0.1, and is then "same origin" with the gateway: any header, answers
  readable. Its requests still say ``Host: evil.example``. Bound to a loopback
  address (or given ``server.allowed_hosts``), the gateway answers only Hosts
  that name loopback (127.0.0.0/8, ``localhost``, ``[::1]``, any port) or are
  listed. Otherwise: 421 Misdirected Request, RFC 9110's status for "this
  server is not authoritative for that host" (a 400 would read as a bad body).

A request without a Host header (HTTP/1.0) passes: browsers always send one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import MisdirectedRequest, UnsupportedMediaType
from gateway.http.doors import error_body_for
from gateway.http.responses import send_error

LOOPBACK_NAMES = frozenset({"localhost"})
# Allowed Host values seen, kept so the common case is one set lookup; bounded, since clients choose them.
_REMEMBERED_HOSTS = 64
# A Host value is quoted back in the 421 only when it is plainly a host name.
_PLAIN_HOST = re.compile(r"[a-z0-9.\-]{1,100}")


def is_loopback(host: str) -> bool:
    """Whether a host name or address (no port, IPv6 without brackets) names this machine's loopback."""
    name = host.lower().removesuffix(".")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(value: bytes) -> str | None:
    """The host of a Host header value, lower-case, without its port or IPv6 brackets; None when malformed."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        name, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
        return name
    name, colon, port = text.partition(":")
    if colon and port and not port.isdigit():
        return None
    return name.removesuffix(".") or None


class HostAllowList:
    """The Host names the gateway answers to: those that name loopback, and ``allowed_hosts``."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        self._names = frozenset(name.lower().removesuffix(".").strip("[]") for name in allowed_hosts)
        self._seen: set[bytes] = set()

    def allows(self, value: bytes) -> bool:
        if value in self._seen:
            return True
        name = host_name(value)
        allowed = name is not None and (name in self._names or is_loopback(name))
        if allowed and len(self._seen) < _REMEMBERED_HOSTS:
            self._seen.add(value)
        return allowed


def host_check_for(bind_host: str, allowed_hosts: Collection[str]) -> HostAllowList | None:
    """The Host check a gateway bound to ``bind_host`` needs, or None.

    Bound to loopback only local clients can connect, so any other Host is a
    rebinding page. Bound to other addresses the names clients use are not
    known, unless ``allowed_hosts`` lists them; ``*`` in it turns the check off.
    """
    if "*" in allowed_hosts or not (allowed_hosts or is_loopback(bind_host.strip("[]"))):
        return None
    return HostAllowList(allowed_hosts)


def is_json(content_type: bytes | None) -> bool:
    """``application/json``, with any parameters (``; charset=utf-8``), in any case."""
    if content_type is None:
        return False
    media_type = content_type.partition(b";")[0].strip().lower()
    return media_type == b"application/json"


class BrowserGuardMiddleware:
    """421 for a Host the gateway does not answer to; 415 for a POST to ``json_paths`` whose body is not JSON."""

    def __init__(self, app: ASGIApp, hosts: HostAllowList | None, json_paths: Collection[str]) -> None:
        self.app = app
        self._hosts = hosts
        self._json_paths = frozenset(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        checks_type = scope["method"] == "POST" and scope["path"] in self._json_paths
        content_type: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host" and self._hosts is not None and not self._hosts.allows(value):
                await send_error(send, MisdirectedRequest(_quotable(value)), error_body_for(scope["path"]))
                return
            if name == b"content-type":
                content_type = value
        if checks_type and not is_json(content_type):
            await send_error(send, UnsupportedMediaType(scope["path"]), error_body_for(scope["path"]))
            return
        await self.app(scope, receive, send)


def _quotable(value: bytes) -> str | None:
    """The host named, to quote in the error, if it is plainly a name: the client chose those bytes."""
    name = host_name(value)
    return name if name is not None and _PLAIN_HOST.fullmatch(name) else None
