"""Loading the loyalty settings and the rules file fails fast and says what
is wrong, naming the variable, or the file, rule and field."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from crm_runtime.errors import InvalidArgument
from crm_runtime.settings import SettingsError, load_settings
from services.loyalty import settings
from services.loyalty.rulebook import load_file, parse_definition


def test_quiet_hours_come_from_the_shared_settings() -> None:
    policy = settings.policy(load_settings(quiet_hours_start="22:30",
                                           default_time_zone="Europe/Madrid"))
    assert (policy.quiet_start, policy.quiet_end) == (time(22, 30), time(8, 0))
    assert policy.default_time_zone == "Europe/Madrid"


@pytest.mark.parametrize(("variable", "value"), [
    ("CRM_LOYALTY_EXPIRY_NOTICE_DAYS", "0"),
    ("CRM_LOYALTY_EXPIRY_NOTICE_DAYS", "many"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str,
                                        value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        settings.load()
    assert variable in str(err.value)


def test_the_retired_trust_settings_name_what_replaced_them() -> None:
    lines = settings.retired({"CRM_LOYALTY_FREQUENCY_CAP": "5",
                              "CRM_LOYALTY_QUIET_HOURS_START": "22:00", "CRM_LOG_LEVEL": "INFO"})
    assert lines == [
        "CRM_LOYALTY_FREQUENCY_CAP is no longer read; use CRM_CONTACT_CAPS (its "
        "promotional_offers limit), read by the customers service's contact gate",
        "CRM_LOYALTY_QUIET_HOURS_START is no longer read; use CRM_QUIET_HOURS_START"]
    assert settings.retired({}) == []


def test_a_bad_rules_file_names_the_file_rule_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("""
rules:
  - id: fine
    trigger: customer.registered
    actions: [{type: newsletter, list: monthly}]
  - id: broken
    trigger: customer.stage_changed
    when: {to_stage: vip}
    actions: [{type: newsletter, list: monthly}]
""")
    with pytest.raises(InvalidArgument) as err:
        load_file(path)
    assert err.value.field == "rules.yaml: rules[1] (broken).when.to_stage.eq"
    path.write_text("rules: [unclosed")
    with pytest.raises(InvalidArgument) as err:
        load_file(path)
    assert "cannot read the rules file" in err.value.problem


def test_rules_over_grpc_are_yaml_or_json() -> None:
    as_json = parse_definition('{"id": "a", "trigger": "customer.won_back",'
                               ' "actions": [{"type": "discount", "percent": 5}]}')
    as_yaml = parse_definition("id: a\ntrigger: customer.won_back\n"
                               "actions: [{type: discount, percent: 5}]")
    assert as_json == as_yaml
    with pytest.raises(InvalidArgument) as err:
        parse_definition("- just\n- a list")
    assert err.value.field == "definition"
