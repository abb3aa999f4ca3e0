"""Verify a CRM webhook delivery (Standard Webhooks signature), standard library only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

TOLERANCE_S = 5 * 60


class InvalidSignature(Exception):
    """Not signed with the webhook's secret, altered, or too old: refuse it."""


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes,
                   now: float | None = None) -> str:
    """Check a delivery's signature; return its ``webhook-id`` (the event's
    id: the same on every retry, so dedupe on it) or raise InvalidSignature.

    ``secret``: the webhook's ``whsec_...``; ``headers``: the request's
    headers (any case); ``body``: the raw request body, as received."""
    lower = {name.lower(): value for name, value in headers.items()}
    msg_id = lower.get("webhook-id", "")
    stamp = lower.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        raise InvalidSignature("missing webhook-id or webhook-timestamp")
    if abs((time.time() if now is None else now) - int(stamp)) > TOLERANCE_S:
        raise InvalidSignature("webhook-timestamp is more than 5 minutes away")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
    expected = base64.b64encode(mac.digest()).decode()
    for signature in lower.get("webhook-signature", "").split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return msg_id
    raise InvalidSignature("no v1 signature matches")
