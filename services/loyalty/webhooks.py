"""Webhooks, the pure part: what a subscription may say, how a delivery is
signed and rendered, and what an answer means.

Loyalty pushes the product's events to systems that cannot read Kafka: a
subscription names a URL and the event types it wants (exact types or
prefixes ending in ``*``), optionally one customer. Each delivery is one
HTTP POST of one event in the CloudEvents HTTP binding (binary content mode
by default: ``ce-*`` headers and the event's data as the JSON body;
structured mode on request: the whole event as JSON), signed as Standard
Webhooks (https://www.standardwebhooks.com/) asks: ``webhook-id`` (the
event's ce id, the same on every retry), ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256>``.

Nothing here does I/O: :mod:`webhook_store` holds the rows,
:mod:`webhook_delivery` enqueues and sends, :mod:`webhook_api` maps gRPC.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import random
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from crm_contracts import customers, interactions, loyalty
from crm_contracts.base import registered_types
from crm_contracts.topics import CUSTOMERS, INTERACTIONS, LOYALTY
from crm_runtime.convert import parse_uuid
from crm_runtime.errors import InvalidArgument
from crm_runtime.errors import quote as quoted
from crm_runtime.events import SPECVERSION, STRUCTURED_JSON, format_time

#: The topics whose events webhooks deliver (importing their payload modules
#: registers their types).
TOPICS = (CUSTOMERS, INTERACTIONS, LOYALTY)
_PAYLOADS = (customers, interactions, loyalty)
WEBHOOK_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
MAX_URL = 2000
SECRET_PREFIX = "whsec_"
#: A given secret's key length, in bytes (a generated one has 32).
SECRET_BYTES = (24, 64)
GENERATED_SECRET_BYTES = 32
#: Tries of a delivery before it is parked, at most.
MAX_ATTEMPTS = 30
#: Same-origin 307/308 redirects one attempt follows, at most.
MAX_REDIRECTS = 3
#: How much of an answer's body a delivery keeps.
RESPONSE_KEPT = 1024

ContentMode = Literal["binary", "structured"]
BINARY: ContentMode = "binary"
STRUCTURED: ContentMode = "structured"
#: What became of one attempt: delivered (2xx), retry later, or failed (parked).
Kind = Literal["delivered", "retry", "failed"]
#: Delivery states: waiting or being retried, delivered, parked, dropped
#: because the webhook was deleted.
STATES = ("pending", "delivered", "failed", "deleted")


def known_types() -> list[str]:
    """Every event type webhooks can deliver: those registered for the
    customers', interactions' and loyalty's topics."""
    return sorted(t for t, cls in registered_types().items() if cls.topic in TOPICS)


@dataclass(frozen=True)
class WebhookSpec:
    """A validated subscription (``secret_generated``: the request gave none)."""

    webhook_id: str
    url: str
    event_types: tuple[str, ...]
    customer_id: uuid.UUID | None
    content_mode: ContentMode
    max_attempts: int
    secret: str
    secret_generated: bool
    description: str


def validate(*, webhook_id: str, url: str, event_types: Sequence[str], customer_id: str,
             content_mode: ContentMode, max_attempts: int, secret: str, description: str,
             default_max_attempts: int, known: Sequence[str]) -> WebhookSpec:
    """The subscription a CreateWebhook request asks for; INVALID_ARGUMENT
    naming the first bad field otherwise. ``max_attempts`` 0 is the default;
    an empty ``secret`` is generated."""
    if not WEBHOOK_ID.match(webhook_id):
        raise InvalidArgument("webhook_id", f"{quoted(webhook_id)} must match "
                                            f"{WEBHOOK_ID.pattern}")
    check_url(url)
    types = check_event_types(event_types, known)
    customer = parse_uuid(customer_id, "customer_id") if customer_id else None
    if max_attempts == 0:
        max_attempts = default_max_attempts
    elif not 1 <= max_attempts <= MAX_ATTEMPTS:
        raise InvalidArgument("max_attempts", f"must be 1 to {MAX_ATTEMPTS} (0: the default, "
                                              f"{default_max_attempts}), got {max_attempts}")
    generated = not secret
    if generated:
        secret = generate_secret()
    else:
        check_secret(secret)
    return WebhookSpec(webhook_id=webhook_id, url=url, event_types=types, customer_id=customer,
                       content_mode=content_mode, max_attempts=max_attempts, secret=secret,
                       secret_generated=generated, description=description)


def check_url(url: str) -> SplitResult:
    """An absolute http or https URL with a host, no user name or password
    and no fragment, at most :data:`MAX_URL` characters; INVALID_ARGUMENT
    ``url`` otherwise."""
    if not url:
        raise InvalidArgument("url", "required: the http or https URL to POST events to")
    if len(url) > MAX_URL:
        raise InvalidArgument("url", f"is {len(url)} characters long; at most {MAX_URL}")
    if any(c <= " " or c == "\x7f" for c in url):
        raise InvalidArgument("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in range
    except ValueError as exc:
        raise InvalidArgument("url", f"is not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidArgument("url", f"must be an http or https URL, not "
                                     f"{quoted(parts.scheme or url)}")
    if not parts.hostname:
        raise InvalidArgument("url", "has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument("url", "must not carry a user name or password (use the "
                                     "signature to authenticate deliveries)")
    if parts.fragment or url.endswith("#"):
        raise InvalidArgument("url", "must not have a fragment (#...)")
    if port == 0:
        raise InvalidArgument("url", "port 0 is not a port")
    return parts


def check_event_types(patterns: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """Each an exact known type or a prefix ending in ``*`` that matches one;
    INVALID_ARGUMENT ``event_types[i]`` otherwise."""
    if not patterns:
        raise InvalidArgument("event_types", "give at least one event type or prefix "
                                             "(\"customer.*\"; \"*\" is every event)")
    for i, pattern in enumerate(patterns):
        field = f"event_types[{i}]"
        if pattern.endswith("*"):
            prefix = pattern[:-1]
            if "*" in prefix:
                raise InvalidArgument(field, f"{quoted(pattern)}: \"*\" may only end a prefix")
            if not any(t.startswith(prefix) for t in known):
                raise InvalidArgument(field, f"{quoted(pattern)} matches no known event type")
        elif pattern not in known:
            raise InvalidArgument(field, f"{quoted(pattern)} is not a known event type (or "
                                         "end a prefix with \"*\")")
    return tuple(patterns)


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """Whether a subscription's types take ``event_type``."""
    return any(event_type.startswith(p[:-1]) if p.endswith("*") else event_type == p
               for p in patterns)


# --- secrets and signatures ------------------------------------------------------------


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(GENERATED_SECRET_BYTES)).decode()


def check_secret(secret: str) -> bytes:
    """The signing key of a ``whsec_<base64>`` secret of 24 to 64 bytes;
    INVALID_ARGUMENT ``secret`` otherwise."""
    low, high = SECRET_BYTES
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidArgument("secret", f"must be {SECRET_PREFIX}<base64 of {low} to {high} "
                                        "random bytes> (or empty: one is generated)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("secret", f"the part after {SECRET_PREFIX} is not "
                                        "base64") from None
    if not low <= len(key) <= high:
        raise InvalidArgument("secret", f"holds {len(key)} bytes; give {low} to {high}")
    return key


def secret_key(secret: str) -> bytes:
    """The signing key of a stored (valid) secret."""
    return base64.b64decode(secret[len(SECRET_PREFIX):])


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` (Standard Webhooks)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


# --- retries -----------------------------------------------------------------------------


def backoff(attempts: int, base: float, cap: float,
            uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after the ``attempts``-th failed try: the ceiling
    ``min(cap, base * 2**(attempts-1))``, with equal jitter (half of it
    fixed, the other half random), so retries of many deliveries spread out
    yet none comes back sooner than half the ceiling."""
    ceiling = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 60))
    return ceiling / 2 + uniform(0, ceiling / 2)


def retry_after(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header in seconds (delta seconds or an HTTP date),
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def classify(status: int) -> Kind:
    """What an HTTP status means for a delivery: 2xx delivered; 5xx, 408
    and 429 retry later; anything else (other 4xx, a 3xx not followed) is a
    refusal that retrying would not change: parked at once."""
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in (408, 429):
        return "retry"
    return "failed"


def followed_redirect(url: str, status: int, location: str | None) -> str | None:
    """The URL a 307 or 308 answer sends the POST to, if it is on the same
    scheme, host and port as ``url`` (anything else is never followed)."""
    if status not in (307, 308) or not location:
        return None
    target = urljoin(url, location.strip())
    try:
        a, b = urlsplit(url), urlsplit(target)
        return target if (a.scheme.lower(), a.hostname, _port(a)) == (
            b.scheme.lower(), b.hostname, _port(b)) else None
    except ValueError:
        return None


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


# --- CloudEvents over HTTP -----------------------------------------------------------------


@dataclass(frozen=True)
class StoredEvent:
    """One event as a delivery sends it: its CloudEvents attributes and its
    data (JSON)."""

    event_id: str
    event_type: str
    source: str
    subject: str
    time: datetime
    traceparent: str
    data: bytes


@dataclass(frozen=True)
class HttpRequest:
    headers: dict[str, str]
    body: bytes


#: Characters a CloudEvents HTTP header value keeps as they are: printable
#: ASCII but space, double quote and percent (HTTP binding, 3.1.3.2).
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')


def _header(value: str) -> str:
    return quote(value, safe=_HEADER_SAFE)


def render(event: StoredEvent, mode: ContentMode, key: bytes, timestamp: int) -> HttpRequest:
    """The POST of ``event``: binary mode (``ce-*`` headers, the data as an
    ``application/json`` body) or structured (the whole event as
    ``application/cloudevents+json``), with the Standard Webhooks signature
    headers of this attempt's ``timestamp`` (unix seconds)."""
    if mode == STRUCTURED:
        whole: dict[str, object] = {
            "specversion": SPECVERSION, "id": event.event_id, "source": event.source,
            "type": event.event_type, "time": format_time(event.time),
            "datacontenttype": "application/json"}
        if event.subject:
            whole["subject"] = event.subject
        if event.traceparent:
            whole["traceparent"] = event.traceparent
        whole["data"] = json.loads(event.data)
        body = json.dumps(whole, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"content-type": STRUCTURED_JSON}
    else:
        body = event.data
        headers = {"content-type": "application/json", "ce-specversion": SPECVERSION,
                   "ce-id": _header(event.event_id), "ce-source": _header(event.source),
                   "ce-type": _header(event.event_type),
                   "ce-time": format_time(event.time)}
        if event.subject:
            headers["ce-subject"] = _header(event.subject)
    if event.traceparent:
        headers["traceparent"] = event.traceparent  # W3C trace context, in both modes
    headers.update(signature_headers(key, event.event_id, timestamp, body))
    return HttpRequest(headers, body)


def signature_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, msg_id, timestamp, body)}


def response_text(raw: bytes) -> str:
    """The first :data:`RESPONSE_KEPT` bytes of an answer, as text a database
    stores (undecodable bytes replaced, no NUL)."""
    return raw[:RESPONSE_KEPT].decode("utf-8", errors="replace").replace("\x00", "\ufffd")

