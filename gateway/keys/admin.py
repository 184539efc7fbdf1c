"""The admin key check of the endpoints outside ``/v1/`` (the status page, the engines' operations).

``/v1/`` is guarded by ApiKeyMiddleware; these paths are not, so each checks
here. A browser opening a page sends no Bearer header, so the admin key is
also taken as the password of HTTP Basic auth (any user name): the 401 asks
the browser for it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from gateway.errors import AdminKeyRequired, InvalidApiKey
from gateway.keys.keyring import KeyRing, presented_key
from providers import OpenAIError

BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Switchyard"'}


def require_admin_key(keys: KeyRing, headers: Iterable[tuple[bytes, bytes]], none_configured: str | None = None) -> None:
    """Raise unless an admin key is presented: as the API takes keys, or as a Basic auth password.

    401 (with a Basic challenge) for no key or an unknown one, 403 for
    another key, and 403 when no admin key is configured at all (``none_configured`` says what to do then).
    """
    if not keys.has_admin_keys:
        if none_configured is None:
            raise AdminKeyRequired(configured=False)
        raise OpenAIError(
            none_configured, status_code=AdminKeyRequired.status_code, error_type=AdminKeyRequired.error_type,
            code=AdminKeyRequired.code,
        )  # fmt: skip
    headers = list(headers)
    token = presented_key(headers) or basic_password(headers)
    try:
        if token is None:
            raise InvalidApiKey(presented=False)
        # identify() reads a header as a client sent it (latin-1, as presented_key decoded it).
        key = keys.identify([(b"authorization", b"Bearer " + token.encode("latin-1"))])
        if key is None:  # an open gateway: an unknown key is no error on /v1/, but it is no admin key
            raise InvalidApiKey(presented=True)
    except InvalidApiKey as error:
        error.headers = {**error.headers, **BASIC_CHALLENGE}
        raise
    if not key.admin:
        raise AdminKeyRequired(configured=True)


def basic_password(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The password of an ``Authorization: Basic`` header (latin-1, as other keys are read), if there is one."""
    for name, value in headers:
        if name != b"authorization":
            continue
        scheme, _, encoded = value.partition(b" ")
        if scheme.lower() != b"basic":
            continue
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None
