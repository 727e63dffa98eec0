"""Signed callbacks: the Standard Webhooks scheme (https://www.standardwebhooks.com/).

Each signed POST carries three headers: ``webhook-id`` (the same on every retry of
one event, so the receiver can drop duplicates), ``webhook-timestamp`` (unix seconds
of the attempt) and ``webhook-signature`` = ``v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``. The body posted is exactly the bytes signed.

Secrets: ``whsec_<base64>`` (the usual Standard Webhooks form: the key is the
decoded bytes) or any other string (the key is its UTF-8 bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

PREFIX = "whsec_"
MIN_KEY_BYTES = 16  # shorter keys are too easy to guess


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret; ValueError (naming the form) if it is malformed."""
    if secret.startswith(PREFIX):
        try:
            text = secret[len(PREFIX) :]
            # Padding is optional (as the standardwebhooks libraries read it).
            key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError('"whsec_" must be followed by base64') from None
    else:
        key = secret.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"must give a key of at least {MIN_KEY_BYTES} bytes")
    return key


def encode(body: Any) -> bytes:
    """The bytes posted (and signed) for a JSON body."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt to post `body`; `secret` is a
    secret as configured (str) or its key (bytes, see `secret_key`)."""
    key = secret_key(secret) if isinstance(secret, str) else secret
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def headers(key: bytes | None, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Content type, plus the signature headers when the profile has a key."""
    out = {"Content-Type": "application/json"}
    if key is not None:
        out.update(sign(key, webhook_id, timestamp, body))
    return out
