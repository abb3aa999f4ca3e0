"""Random identifiers drawn from a buffer of the system's random source."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_runtime import ids


def test_event_ids_are_canonical_random_uuids_and_distinct() -> None:
    made = [ids.uuid4_text() for _ in range(5000)]  # more than one 4 KiB buffer
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text
    objects = {ids.uuid4() for _ in range(600)}
    assert len(objects) == 600
    assert all((u.version, u.variant) == (4, uuid.RFC_4122) for u in objects)


def test_every_variant_nibble_is_one_of_rfc_9562() -> None:
    assert {ids.uuid4_text()[19] for _ in range(2000)} == set("89ab")


def test_random_hex_has_the_length_asked_for() -> None:
    assert len(ids.random_hex(16)) == 32 and len(ids.random_hex(8)) == 16
    assert len({ids.random_hex(8) for _ in range(1000)}) == 1000


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    ids.uuid4_text()  # the parent's buffer holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes its next id and leaves at once
        os.write(write, ids.uuid4_text().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child != ids.uuid4_text()


@given(st.uuids(), st.text())
def test_uuid5_is_the_standard_one_to_the_bit(namespace: uuid.UUID, name: str) -> None:
    # Loyalty's action ids are uuid5s stored in the database: a different
    # bit would let a redelivered trigger act twice after an upgrade.
    made = ids.uuid5(namespace, name)
    assert made == uuid.uuid5(namespace, name)
    assert str(made) == str(uuid.uuid5(namespace, name))


@given(st.uuids())
def test_read_uuid_reads_every_form_the_standard_class_reads(value: uuid.UUID) -> None:
    for text in (str(value), str(value).upper(), value.hex, f"{{{value}}}", value.urn):
        read = ids.read_uuid(text)
        assert read == value and hash(read) == hash(value) and str(read) == str(value)
        assert isinstance(read, uuid.UUID)


@pytest.mark.parametrize("text", ["", "nope", "1234", "0c701e62-92be-0c0a-1406-33b924faef1",
                                  "0c701e62-92be-0c0a-1406-33b924faef1bx", "g" * 32])
def test_read_uuid_refuses_what_the_standard_class_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        uuid.UUID(text)
    with pytest.raises(ValueError):
        ids.read_uuid(text)


def test_read_uuid_refuses_what_is_not_text() -> None:
    with pytest.raises(TypeError):
        ids.read_uuid(b"0123456789abcdef")  # type: ignore[arg-type]  # raw bytes are not a UUID's text


def test_made_uuids_mix_with_standard_ones() -> None:
    made, standard = ids.uuid4(), uuid.uuid4()
    assert sorted([made, standard]) in ([made, standard], [standard, made])
    assert {made: 1}[uuid.UUID(str(made))] == 1
    assert made.version == 4 and made.variant == uuid.RFC_4122
