"""The contact gate's settings (crm_runtime.settings): caps per purpose over
the defaults, the window, quiet hours and the default zone, each refused
with the variable named."""

from __future__ import annotations

from datetime import time

import pytest

from crm_contracts.vocabulary import CONTACT_PURPOSES
from crm_runtime.settings import DEFAULT_CONTACT_CAPS, SettingsError, load_settings
from tests.deploy.settings_env import settings_from


def test_every_purpose_has_a_default_cap() -> None:
    assert set(DEFAULT_CONTACT_CAPS) == set(CONTACT_PURPOSES)
    defaults = load_settings()
    assert defaults.contact_caps == DEFAULT_CONTACT_CAPS
    assert (defaults.contact_cap_window_days, defaults.default_time_zone) == (7, "UTC")
    assert defaults.quiet_hours() == (time(21, 0), time(8, 0))


def test_caps_from_the_environment_keep_the_defaults_of_purposes_left_out() -> None:
    s = settings_from({"CRM_CONTACT_CAPS": '{"surveys": 1, "service": 10}',
                       "CRM_QUIET_HOURS_START": "22:30", "CRM_DEFAULT_TIME_ZONE": "Europe/Madrid"})
    assert s.contact_caps == {**DEFAULT_CONTACT_CAPS, "surveys": 1, "service": 10}
    assert s.quiet_hours() == (time(22, 30), time(8, 0))


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("CRM_CONTACT_CAPS", '{"sms": 2}', "unknown purpose(s) ['sms']"),
    ("CRM_CONTACT_CAPS", '{"surveys": 0}', "greater than or equal to 1"),
    ("CRM_CONTACT_CAPS", "three", "expected JSON"),
    ("CRM_CONTACT_CAP_WINDOW_DAYS", "0", "greater than or equal to 1"),
    ("CRM_QUIET_HOURS_END", "8pm", "is not a time of day"),
    ("CRM_DEFAULT_TIME_ZONE", "Mars/Olympus", "is not an IANA time zone"),
])
def test_a_bad_value_names_the_variable(variable: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from({variable: value})
    assert variable in str(err.value) and words in str(err.value)
