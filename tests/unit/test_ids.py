"""Random identifiers drawn from a buffer of the system's random source."""

from __future__ import annotations

import os
import uuid

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
