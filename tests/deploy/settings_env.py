"""Environment variables the product reads, to check deployment manifests."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from crm_runtime.settings import Settings, load_settings
from services.loyalty.settings import LoyaltySettings

CONNECTION_VARIABLES = {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "CRM_DATABASE_URL",
                        "CRM_KAFKA_BOOTSTRAP_SERVERS"}


def known_variables() -> set[str]:
    """Every environment variable some setting is read from."""
    fields = {f"CRM_{name.upper()}" for name in Settings.model_fields
              if name not in ("database_url", "kafka_bootstrap_servers")}
    loyalty = {f"CRM_LOYALTY_{name.upper()}" for name in LoyaltySettings.model_fields}
    return CONNECTION_VARIABLES | fields | loyalty


@contextmanager
def only_environment(env: Mapping[str, str]) -> Iterator[None]:
    """Run with exactly ``env`` as the product's variables (others removed)."""
    saved = dict(os.environ)
    try:
        for name in list(os.environ):
            if name.startswith("CRM_") or name in CONNECTION_VARIABLES:
                del os.environ[name]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_from(env: Mapping[str, str]) -> Settings:
    """Settings as a process with exactly these variables would load them
    (raises SettingsError naming a bad variable)."""
    with only_environment(env):
        return load_settings()
