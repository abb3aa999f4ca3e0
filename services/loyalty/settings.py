"""Settings of the loyalty service: the trust rules' knobs and the rules file.

Read from ``CRM_LOYALTY_*`` environment variables (the shared runtime's
settings stay service-neutral). :func:`load` fails fast with the variable's
name and what was expected.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_runtime.settings import SettingsError
from services.loyalty.domain import TrustPolicy, parse_clock_time, time_zone

DEFAULT_RULES_FILE = Path(__file__).parent / "rules.yaml"


class LoyaltySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_LOYALTY_", extra="ignore")

    frequency_cap: int = Field(
        default=3, ge=1, le=100,
        description="Most promotional contacts per customer per window, all rules together.")
    frequency_window_days: int = Field(default=7, ge=1, le=365)
    quiet_hours_start: str = Field(default="21:00", description="Local time, HH:MM.")
    quiet_hours_end: str = Field(default="08:00", description="Local time, HH:MM; equal to "
                                 "the start means no quiet hours.")
    default_time_zone: str = Field(default="UTC", description="IANA zone for customers whose "
                                   "zone is unknown.")
    expiry_notice_days: int = Field(default=3, ge=1, le=60,
                                    description="loyalty.discount_expiring this long before.")
    rules_file: Path = Field(default=DEFAULT_RULES_FILE,
                             description="YAML rules loaded at start.")

    @field_validator("quiet_hours_start", "quiet_hours_end")
    @classmethod
    def _clock(cls, value: str) -> str:
        parse_clock_time(value)
        return value

    @field_validator("default_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if str(time_zone(value, "")) != value:
            raise ValueError(f"{value!r} is not an IANA time zone")
        return value

    def policy(self) -> TrustPolicy:
        return TrustPolicy(cap=self.frequency_cap,
                           window=timedelta(days=self.frequency_window_days),
                           quiet_start=parse_clock_time(self.quiet_hours_start),
                           quiet_end=parse_clock_time(self.quiet_hours_end),
                           default_time_zone=self.default_time_zone)

    @property
    def expiry_notice(self) -> timedelta:
        return timedelta(days=self.expiry_notice_days)


def load(**overrides: Any) -> LoyaltySettings:
    try:
        return LoyaltySettings(**overrides)
    except ValidationError as exc:
        problems = [f"CRM_LOYALTY_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']} "
                    f"(got {e.get('input')!r})" for e in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
