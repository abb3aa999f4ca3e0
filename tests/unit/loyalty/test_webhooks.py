"""Webhooks, the pure part: subscription checks, the Standard Webhooks
signature (checked by the receivers' snippet, examples/verify_webhook.py),
backoff bounds, what an answer means, and the CloudEvents HTTP rendering
read back by the official SDK."""

from __future__ import annotations

import base64
import json
import os
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.v1.http import from_http

from crm_runtime.errors import InvalidArgument
from crm_runtime.settings import SettingsError
from examples.verify_webhook import InvalidSignature, verify_webhook
from services.loyalty import settings, webhooks
from services.loyalty.webhooks import (
    StoredEvent,
    backoff,
    check_event_types,
    check_secret,
    check_url,
    classify,
    followed_redirect,
    known_types,
    matches,
    render,
    retry_after,
    secret_key,
    sign,
)

ROOT = Path(__file__).resolve().parents[3]
KNOWN = known_types()


def _refused(field: str, call: object, *args: object) -> str:
    with pytest.raises(InvalidArgument) as err:
        call(*args)  # type: ignore[operator]
    assert err.value.field == field, err.value
    return str(err.value)


# --- subscriptions ---------------------------------------------------------------------


def test_known_types_are_the_three_topics_events() -> None:
    assert {"customer.registered", "case.opened", "loyalty.discount_issued"} <= set(KNOWN)
    assert "contact.received" not in KNOWN  # the ingest topic is not delivered


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "https://hooks.example.com/crm?team=pos",
    "HTTPS://Example.COM", "http://[::1]:9000/x"])
def test_good_urls(url: str) -> None:
    assert check_url(url).hostname


@pytest.mark.parametrize(("url", "says"), [
    ("", "required"), ("ftp://example.com/x", "http or https"),
    ("example.com/hook", "http or https"), ("http:///path-only", "no host"),
    ("https://user:pw@example.com/", "user name or password"),
    ("https://user@example.com/", "user name or password"),
    ("https://example.com/#frag", "fragment"), ("https://example.com/#", "fragment"),
    ("https://example.com:99999/", "not a URL"), ("https://example.com:0/", "port 0"),
    ("https://exa mple.com/", "spaces"), ("https://example.com/\x00", "control"),
    ("https://example.com/" + "a" * 2000, "at most 2000")])
def test_bad_urls_name_the_url(url: str, says: str) -> None:
    assert says in _refused("url", check_url, url)


def test_event_types_exact_and_prefixes() -> None:
    assert check_event_types(["customer.registered", "case.*", "*"], KNOWN) == (
        "customer.registered", "case.*", "*")
    assert matches(["case.*"], "case.opened") and not matches(["case.*"], "customer.erased")
    assert matches(["*"], "loyalty.discount_issued")
    assert matches(["customer.registered"], "customer.registered")
    assert not matches(["customer.registered"], "customer.registered_twice")


@pytest.mark.parametrize(("types", "field", "says"), [
    ([], "event_types", "at least one"),
    (["customer.registered", "customer.nope"], "event_types[1]", "not a known event type"),
    (["nothing.*"], "event_types[0]", "matches no known event type"),
    (["cus*tomer.*"], "event_types[0]", "may only end"),
    ([""], "event_types[0]", "not a known event type"),
    (["contact.received"], "event_types[0]", "not a known event type")])
def test_bad_event_types_name_the_item(types: list[str], field: str, says: str) -> None:
    assert says in _refused(field, check_event_types, types, KNOWN)


def _spec(**changes: object) -> webhooks.WebhookSpec:
    values: dict[str, object] = dict(
        webhook_id="pos-sync", url="https://example.com/h", event_types=["customer.*"],
        customer_id="", content_mode="binary", max_attempts=0, secret="", description="",
        default_max_attempts=8, known=KNOWN)
    values.update(changes)
    return webhooks.validate(**values)  # type: ignore[arg-type]


def test_defaults_a_generated_secret_and_max_attempts() -> None:
    spec = _spec()
    assert spec.max_attempts == 8 and spec.secret_generated and spec.customer_id is None
    assert len(check_secret(spec.secret)) == 32
    assert _spec().secret != spec.secret
    cid = uuid.uuid4()
    assert _spec(customer_id=str(cid).upper(), max_attempts=30).customer_id == cid


@pytest.mark.parametrize(("changes", "field"), [
    ({"webhook_id": ""}, "webhook_id"), ({"webhook_id": "Pos"}, "webhook_id"),
    ({"webhook_id": "a" * 64}, "webhook_id"), ({"max_attempts": 31}, "max_attempts"),
    ({"max_attempts": -1}, "max_attempts"), ({"customer_id": "42"}, "customer_id"),
    ({"url": "mailto:x@example.com"}, "url"), ({"event_types": ["x"]}, "event_types[0]"),
    ({"secret": "nope"}, "secret")])
def test_each_bad_field_is_named(changes: dict[str, object], field: str) -> None:
    _refused(field, lambda: _spec(**changes))


@pytest.mark.parametrize(("secret", "says"), [
    ("abc", "whsec_"), ("whsec_not base64!", "not base64"),
    ("whsec_" + base64.b64encode(b"x" * 23).decode(), "holds 23 bytes"),
    ("whsec_" + base64.b64encode(b"x" * 65).decode(), "holds 65 bytes")])
def test_bad_secrets(secret: str, says: str) -> None:
    assert says in _refused("secret", check_secret, secret)


def test_a_given_secret_of_24_to_64_bytes() -> None:
    for size in (24, 64):
        secret = "whsec_" + base64.b64encode(bytes(range(size))).decode()
        assert _spec(secret=secret).secret == secret
        assert not _spec(secret=secret).secret_generated


# --- signatures ------------------------------------------------------------------------


def test_the_standard_webhooks_example_signature() -> None:
    """The example of the Standard Webhooks specification."""
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                b'{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _event(**changes: object) -> StoredEvent:
    values: dict[str, object] = dict(
        event_id="e-1", event_type="customer.registered", source="/crm/customers",
        subject=str(uuid.UUID(int=7)), time=datetime(2031, 3, 3, 12, 0, 1, 5000, tzinfo=UTC),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        data=b'{"customer_id":"x","note":"Gr\xc3\xbc\xc3\x9fe"}')
    values.update(changes)
    return StoredEvent(**values)  # type: ignore[arg-type]


def test_the_snippet_verifies_a_rendered_delivery_and_refuses_the_rest() -> None:
    secret = webhooks.generate_secret()
    now = 1_900_000_000
    request = render(_event(), "binary", secret_key(secret), now)
    headers, body = request.headers, request.body
    assert verify_webhook(secret, headers, body, now=now + 299) == "e-1"
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_webhook(secret, upper, body, now=now) == "e-1"
    with pytest.raises(InvalidSignature, match="5 minutes"):
        verify_webhook(secret, headers, body, now=now + 301)
    with pytest.raises(InvalidSignature, match="matches"):
        verify_webhook(secret, headers, body + b" ", now=now)
    with pytest.raises(InvalidSignature, match="matches"):
        verify_webhook(webhooks.generate_secret(), headers, body, now=now)
    with pytest.raises(InvalidSignature, match="matches"):
        verify_webhook(secret, {**headers, "webhook-id": "e-2"}, body, now=now)
    with pytest.raises(InvalidSignature, match="missing"):
        verify_webhook(secret, {k: v for k, v in headers.items() if k != "webhook-id"}, body)
    # Several signatures (a secret being rotated): one that matches is enough.
    rotated = {**headers, "webhook-signature": "v1,bm9wZQ== " + headers["webhook-signature"]}
    assert verify_webhook(secret, rotated, body, now=now) == "e-1"


def test_the_docs_repeat_the_snippet_verbatim() -> None:
    doc = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    snippet = (ROOT / "examples" / "verify_webhook.py").read_text(encoding="utf-8")
    assert snippet in doc


# --- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 12, 40, 1000])
def test_backoff_stays_within_half_and_all_of_its_capped_ceiling(attempts: int) -> None:
    base, cap = 1.0, 3600.0
    ceiling = min(cap, base * 2 ** (attempts - 1))
    assert backoff(attempts, base, cap, uniform=lambda lo, hi: lo) == ceiling / 2
    assert backoff(attempts, base, cap, uniform=lambda lo, hi: hi) == ceiling
    rng = random.Random(attempts)
    for _ in range(200):
        assert ceiling / 2 <= backoff(attempts, base, cap, uniform=rng.uniform) <= ceiling


def test_backoff_doubles_then_holds_at_the_cap() -> None:
    top = [backoff(n, 0.05, 1.0, uniform=lambda lo, hi: hi) for n in range(1, 9)]
    assert top == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_backoff_jitter_spreads() -> None:
    assert len({round(backoff(4, 1.0, 60.0), 6) for _ in range(50)}) > 10


def test_retry_after_seconds_or_a_date() -> None:
    now = datetime(2031, 3, 3, 12, tzinfo=UTC)
    assert retry_after("120", now) == 120.0
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after(later, now) == 90.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
    assert retry_after("soon", now) is None and retry_after(None, now) is None


@pytest.mark.parametrize(("status", "kind"), [
    (200, "delivered"), (204, "delivered"), (299, "delivered"), (500, "retry"),
    (503, "retry"), (408, "retry"), (429, "retry"), (400, "failed"), (401, "failed"),
    (404, "failed"), (410, "failed"), (301, "failed"), (307, "failed"), (101, "failed")])
def test_classify(status: int, kind: str) -> None:
    assert classify(status) == kind


@pytest.mark.parametrize(("status", "location", "followed"), [
    (307, "/next", "http://h:8080/next"), (308, "http://h:8080/x", "http://h:8080/x"),
    (307, "http://other:8080/x", None), (307, "https://h:8080/x", None),
    (307, "http://h:9090/x", None), (302, "/next", None), (301, "/next", None),
    (303, "/next", None), (307, None, None), (307, "http://h:99999/x", None)])
def test_only_same_origin_307_and_308_are_followed(status: int, location: str | None,
                                                   followed: str | None) -> None:
    assert followed_redirect("http://h:8080/hook", status, location) == followed


def test_default_ports_count_as_the_same_origin() -> None:
    assert followed_redirect("https://h/a", 307, "https://h:443/b") == "https://h:443/b"


# --- CloudEvents over HTTP -------------------------------------------------------------


def test_binary_mode_is_read_by_the_sdk() -> None:
    event = _event()
    request = render(event, "binary", secret_key(webhooks.generate_secret()), 1)
    assert request.headers["content-type"] == "application/json"
    assert request.body == event.data
    classic = from_http(request.headers, request.body)  # the SDK's v1 API
    assert classic["id"] == "e-1" and classic["type"] == "customer.registered"
    assert classic["source"] == "/crm/customers" and classic["subject"] == event.subject
    assert classic["specversion"] == "1.0"
    assert classic.get_data() == {"customer_id": "x", "note": "Grüße"}
    core = from_http_event(HTTPMessage(request.headers, request.body))  # its core API
    assert (core.get_id(), core.get_type(), core.get_subject()) == (
        "e-1", "customer.registered", event.subject)
    assert core.get_data() == {"customer_id": "x", "note": "Grüße"}
    assert request.headers["traceparent"] == event.traceparent
    parsed = from_http_event(HTTPMessage(request.headers, request.body))
    assert parsed.get_time() == event.time


def test_structured_mode_is_read_by_the_sdk() -> None:
    event = _event(subject="unit:north")
    request = render(event, "structured", secret_key(webhooks.generate_secret()), 1)
    assert request.headers["content-type"] == "application/cloudevents+json"
    assert not any(k.startswith("ce-") for k in request.headers)
    ce = from_http(request.headers, request.body)
    assert ce["id"] == "e-1" and ce["subject"] == "unit:north"
    assert ce["datacontenttype"] == "application/json" and ce["traceparent"]
    assert ce.get_data() == {"customer_id": "x", "note": "Grüße"}
    assert json.loads(request.body)["time"] == "2031-03-03T12:00:01.005000Z"


def test_header_values_are_percent_encoded_as_the_binding_asks() -> None:
    event = _event(subject='a "quoted" 100% ünïcode subject', traceparent="")
    request = render(event, "binary", secret_key(webhooks.generate_secret()), 1)
    assert request.headers["ce-subject"].isascii() and " " not in request.headers["ce-subject"]
    assert "traceparent" not in request.headers
    assert from_http_event(HTTPMessage(request.headers, request.body)).get_subject() == \
        event.subject


# --- settings --------------------------------------------------------------------------


def test_webhook_settings_defaults_and_the_cap_not_below_the_base(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CRM_LOYALTY_WEBHOOK_"):
            monkeypatch.delenv(name)
    conf = settings.load()
    assert (conf.webhook_max_attempts, conf.webhook_backoff_base_s, conf.webhook_backoff_cap_s,
            conf.webhook_timeout_s, conf.webhook_concurrency, conf.webhook_poll_interval_s,
            conf.webhook_retention_days) == (8, 1.0, 3600.0, 10.0, 32, 0.5, 7)
    monkeypatch.setenv("CRM_LOYALTY_WEBHOOK_BACKOFF_BASE_S", "5")
    monkeypatch.setenv("CRM_LOYALTY_WEBHOOK_BACKOFF_CAP_S", "2")
    with pytest.raises(SettingsError, match="CRM_LOYALTY_WEBHOOK_BACKOFF_CAP_S"):
        settings.load()
    monkeypatch.setenv("CRM_LOYALTY_WEBHOOK_BACKOFF_CAP_S", "5")
    monkeypatch.setenv("CRM_LOYALTY_WEBHOOK_MAX_ATTEMPTS", "31")
    with pytest.raises(SettingsError, match="CRM_LOYALTY_WEBHOOK_MAX_ATTEMPTS"):
        settings.load()
