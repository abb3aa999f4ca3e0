"""Settings of the loyalty service: the rules file and the discount
reminders.

Read from ``CRM_LOYALTY_*`` environment variables (the shared runtime's
settings stay service-neutral). :func:`load` fails fast with the variable's
name and what was expected. The trust settings every service shares live in
the runtime's settings: the frequency cap is the contact gate's
(``CRM_CONTACT_CAPS``, ``CRM_CONTACT_CAP_WINDOW_DAYS``, applied by the
customers service) and quiet hours are everyone's (``CRM_QUIET_HOURS_*``,
``CRM_DEFAULT_TIME_ZONE``); the loyalty names they had are retired
(:data:`RETIRED`: set, they do nothing, and the service says so at start).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_runtime.settings import Settings, SettingsError
from services.loyalty.domain import TrustPolicy

DEFAULT_RULES_FILE = Path(__file__).parent / "rules.yaml"

#: Variables loyalty no longer reads, and what replaced each.
RETIRED = {
    "CRM_LOYALTY_FREQUENCY_CAP": "CRM_CONTACT_CAPS (its promotional_offers limit), read by "
                                 "the customers service's contact gate",
    "CRM_LOYALTY_FREQUENCY_WINDOW_DAYS": "CRM_CONTACT_CAP_WINDOW_DAYS, read by the customers "
                                         "service's contact gate",
    "CRM_LOYALTY_QUIET_HOURS_START": "CRM_QUIET_HOURS_START",
    "CRM_LOYALTY_QUIET_HOURS_END": "CRM_QUIET_HOURS_END",
    "CRM_LOYALTY_DEFAULT_TIME_ZONE": "CRM_DEFAULT_TIME_ZONE",
}


class LoyaltySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_LOYALTY_", extra="ignore")

    expiry_notice_days: int = Field(default=3, ge=1, le=60,
                                    description="loyalty.discount_expiring this long before.")
    rules_file: Path = Field(default=DEFAULT_RULES_FILE,
                             description="YAML rules loaded at start.")
    # --- webhooks (services/loyalty/webhook_delivery.py)
    webhook_max_attempts: int = Field(
        default=8, ge=1, le=30,
        description="Tries of a webhook delivery before it is parked (a webhook's default).")
    webhook_backoff_base_s: float = Field(
        default=1.0, gt=0, le=3600,
        description="Wait after a webhook delivery's first failed try; it doubles per try.")
    webhook_backoff_cap_s: float = Field(
        default=3600.0, gt=0, le=86400,
        description="Longest wait between two tries of a webhook delivery.")
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="Time limit of one webhook POST, redirects included.")
    webhook_concurrency: int = Field(
        default=32, ge=1, le=1000,
        description="Webhook POSTs in flight per process (one webhook: a quarter of them).")
    webhook_poll_interval_s: float = Field(
        default=0.5, gt=0, le=60,
        description="How often the webhook worker looks for retries that came due.")
    webhook_retention_days: int = Field(
        default=7, ge=1, le=3650,
        description="Delivered or parked webhook deliveries are deleted after this long.")

    @field_validator("webhook_backoff_cap_s")
    @classmethod
    def _cap_not_below_base(cls, cap: float, info: ValidationInfo) -> float:
        base = info.data.get("webhook_backoff_base_s")
        if base is not None and cap < base:
            raise ValueError(f"must be at least CRM_LOYALTY_WEBHOOK_BACKOFF_BASE_S ({base})")
        return cap

    @property
    def expiry_notice(self) -> timedelta:
        return timedelta(days=self.expiry_notice_days)


def policy(settings: Settings) -> TrustPolicy:
    """When loyalty schedules contacts: the quiet hours every service shares."""
    start, end = settings.quiet_hours()
    return TrustPolicy(quiet_start=start, quiet_end=end,
                       default_time_zone=settings.default_time_zone)


def retired(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per retired variable still set, naming what replaced it."""
    env = os.environ if environ is None else environ
    return [f"{name} is no longer read; use {instead}" for name, instead in RETIRED.items()
            if name in env]


def load(**overrides: Any) -> LoyaltySettings:
    try:
        return LoyaltySettings(**overrides)
    except ValidationError as exc:
        problems = [f"CRM_LOYALTY_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']} "
                    f"(got {e.get('input')!r})" for e in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
