"""Sealed dead letters: a record a consumer cannot apply may hold personal
data (a contact's email, phone and name on the ingest topic), and a
dead-letter topic is read from its start by whoever may. So its value goes
to ``<topic>.dlq`` sealed (AES-256-GCM, :mod:`cryptography`) with a key of
its own, kept only in the consuming service's ``dead_letters`` row
(runtime migration 007). :func:`forget` destroys the keys of one customer's
dead letters when the customer is erased, and the relay destroys keys past
the dead-letter retention; a record whose key is gone is noise for good.
``crm dlq replay`` opens a sealed record with its key before republishing
it (:func:`key_of`)."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_runtime.db import Conn, check_schema_name

#: Header a sealed record carries, naming the cipher.
SEALED_HEADER = "crm_sealed"
CIPHER = b"aes-256-gcm"
_NONCE = 12

#: Keys of dead letters older than ``$1`` days are destroyed (the relay's
#: upkeep runs it).
EXPIRE_KEYS = """UPDATE dead_letters SET value_key = NULL
                  WHERE value_key IS NOT NULL
                    AND created_at < now() - make_interval(days => $1)"""


def seal(value: bytes) -> tuple[bytes, bytes]:
    """(key, sealed value): a fresh 256-bit key and the value encrypted
    with it, the nonce first."""
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE)
    return key, nonce + AESGCM(key).encrypt(nonce, value, None)


def unseal(key: bytes, sealed: bytes) -> bytes:
    """The value :func:`seal` sealed; ``cryptography``'s InvalidTag if the
    key is not its key or the bytes were changed."""
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], None)


async def key_of(conn: Conn, group: str, topic: str, partition: int, offset: int,
                 schema: str | None = None) -> bytes | None:
    """The key of the dead letter ``group`` recorded for this record (in
    ``schema``'s table, default the connection's); None when it was
    destroyed (erasure, retention) or there is no such row."""
    if schema is not None:
        check_schema_name(schema)
    table = f'"{schema}".dead_letters' if schema else "dead_letters"
    key: bytes | None = await conn.fetchval(
        f"""SELECT value_key FROM {table} WHERE consumer_group = $1 AND topic = $2
              AND kafka_partition = $3 AND kafka_offset = $4""", group, topic, partition, offset)
    return key


async def forget(conn: Conn, subject: str) -> int:
    """Erasure, in the runtime's tables of the caller's schema: destroy the
    keys of the dead letters about ``subject`` (a customer id) and delete
    the sent outbox rows keyed by it (the unsent ones still go out; no event
    carries personal data). Returns the keys destroyed."""
    destroyed = await conn.execute(
        "UPDATE dead_letters SET value_key = NULL WHERE subject = $1 AND value_key IS NOT NULL",
        subject)
    await conn.execute("DELETE FROM outbox WHERE message_key = $1 AND sent_at IS NOT NULL",
                       subject.encode())
    return int(destroyed.split()[-1])
