"""Sealed dead letters: a value sealed with a fresh key opens only with it."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given
from hypothesis import strategies as st

from crm_runtime import sealing
from crm_runtime.dlq import schema_of_group


@given(st.binary(max_size=4096))
def test_a_sealed_value_opens_with_its_key_and_shows_nothing(value: bytes) -> None:
    key, sealed = sealing.seal(value)
    assert len(key) == 32 and sealing.unseal(key, sealed) == value
    if len(value) >= 8:
        assert value not in sealed


def test_another_key_or_a_changed_byte_does_not_open_it() -> None:
    key, sealed = sealing.seal(b'{"contact_email": "ana@example.com"}')
    other, _ = sealing.seal(b"")
    with pytest.raises(InvalidTag):
        sealing.unseal(other, sealed)
    with pytest.raises(InvalidTag):
        sealing.unseal(key, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_each_seal_has_its_own_key_and_nonce() -> None:
    a, b = sealing.seal(b"same"), sealing.seal(b"same")
    assert a[0] != b[0] and a[1] != b[1]


@pytest.mark.parametrize(("group", "schema"), [
    ("crm-interactions-ingest", "interactions"), ("crm-customers", "customers"),
    ("crm-customers-loyalty", "customers"), ("crm-ledger_ab12", "ledger_ab12")])
def test_a_dead_letter_is_found_in_the_schema_of_its_group(group: str, schema: str) -> None:
    assert schema_of_group(group) == schema


def test_a_group_that_names_no_schema_is_refused() -> None:
    with pytest.raises(ValueError):
        schema_of_group("crm-Bad;Name")
