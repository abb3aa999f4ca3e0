"""The AsyncAPI document in docs/ is generated from the code, fresh, and valid
according to the AsyncAPI CLI (from the npm registry, installed on first use
into .local/node)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from gen_asyncapi import OUTPUT, build, render  # noqa: E402

from tests.support.node import ensure_packages  # noqa: E402

CLI_VERSION = "6.2.0"


def test_the_committed_document_is_fresh() -> None:
    assert OUTPUT.read_text() == render(), "run `make asyncapi` and commit docs/asyncapi.yaml"


def test_every_event_type_has_a_message_on_its_topic() -> None:
    from crm_runtime.events import registered_types

    doc = build()
    names = {m["name"] for m in doc["components"]["messages"].values()}
    product = {t for t, cls in registered_types().items() if cls.topic.startswith("crm.")}
    assert product <= names
    assert {"customer.stage_changed", "interaction.recorded", "case.breached",
            "loyalty.discount_issued", "contact.received"} <= names
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"crm.customers.v1", "crm.customers.v1.dlq", "crm.loyalty.v1"} <= addresses


def _cli() -> Path:
    return ensure_packages(f"@asyncapi/cli@{CLI_VERSION}") / ".bin" / "asyncapi"


@pytest.mark.slow
def test_the_asyncapi_cli_validates_the_document() -> None:
    env = {**os.environ, "SUPPRESS_NO_CONFIG_WARNING": "true"}
    result = subprocess.run([str(_cli()), "validate", str(OUTPUT)], capture_output=True,
                            text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "is valid" in output, output
    assert "0 errors" in output or "errors" not in output, output
    yaml.safe_load(OUTPUT.read_text())  # and plain YAML tools read it too
