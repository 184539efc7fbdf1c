"""Standard Webhooks signatures (www.standardwebhooks.com), which any of its libraries can check.

::

    webhook-id         msg_<32 hex>         the same on every attempt of one event (the receiver's dedup key)
    webhook-timestamp  1764624000           integer Unix seconds of this attempt
    webhook-signature  v1,<base64>          HMAC-SHA256 of "{id}.{timestamp}.{body}" under the secret's key

The secret is written ``whsec_<base64>``; the key is the decoded bytes
after the prefix. The body signed is the exact bytes sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
# The spec asks for keys of 24 to 64 bytes.
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError for anything else."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r} (then base64)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"a webhook secret's key is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key)}")
    return key


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for ``body`` sent as ``message_id`` at ``timestamp``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, message_id, timestamp, body),
    }
