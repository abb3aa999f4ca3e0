"""Where the rules come from and how each process keeps them current.

The product ships default rules in ``rules.yaml``; :func:`load_file` reads
and validates them (a bad file stops the service with the rule and field
named). :meth:`RuleBook.sync_file` writes them to the ``rules`` table once per
process start, as new versions recorded in ``rule_changes``:

- a rule that is not in the table is created;
- a rule whose current version came from the file is updated when the file's
  definition changed (a new product release);
- a rule changed over gRPC (origin ``api``) is kept: the operator's change
  wins over the shipped default, and a log line says so.

:meth:`RuleBook.current` returns the rules, cached per process and reloaded
when ``rules_revision`` moved (any replica's change bumps it in the same
transaction).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from crm_runtime.db import Conn
from crm_runtime.errors import Conflict, InvalidArgument, NotFound
from services.loyalty import store
from services.loyalty.rules import Rule, parse_rule, parse_rule_file

log = logging.getLogger(__name__)

FILE_ACTOR = "rules.yaml"


def load_file(path: Path) -> list[Rule]:
    """Read and validate a rules file; errors name the file, rule and field."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidArgument(str(path), f"cannot read the rules file: {exc}") from None
    try:
        return parse_rule_file(document)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path.name}: {exc.field}", exc.problem) from None


def parse_definition(text: str, field_name: str = "definition") -> Rule:
    """A rule sent over gRPC as YAML or JSON (JSON is YAML)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgument(field_name, f"is not YAML or JSON: {exc}") from None
    return parse_rule(data, field_name)


def digest(rule: Rule) -> str:
    return hashlib.sha256(json.dumps(rule.definition(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StoredRule:
    rule: Rule
    version: int
    origin: str
    updated_at: datetime
    updated_by: str


@dataclass
class RuleBook:
    file_rules: list[Rule]
    _revision: int = -1
    _rules: list[StoredRule] = field(default_factory=list)
    _synced: bool = False
    #: Event types that may make an open follow-up moot (from every rule version).
    cancel_types: frozenset[str] = frozenset()
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def sync_file(self, pool: asyncpg.Pool, now: datetime) -> None:
        """Apply the file's rules once per process (see the module doc)."""
        if self._synced:
            return
        async with self._lock:
            if self._synced:
                return
            async with pool.acquire() as conn, conn.transaction():
                await store.lock_rules_file(conn)
                for rule in self.file_rules:
                    await self._apply_file_rule(conn, rule, now)
            self._synced = True

    async def _apply_file_rule(self, conn: Conn, rule: Rule, now: datetime) -> None:
        row = await store.get_rule(conn, rule.id, lock=True)
        new_digest = digest(rule)
        if row is None:
            await store.write_rule(conn, rule_id=rule.id, version=1, enabled=rule.enabled,
                                   trigger=rule.trigger, definition=rule.definition(),
                                   origin="file", file_digest=new_digest, change="created",
                                   actor=FILE_ACTOR, note="shipped default", now=now)
            return
        if row["file_digest"] == new_digest:
            return
        if row["origin"] == "api":
            log.info("rule %s was changed over gRPC (version %d); the new default from the "
                     "rules file is not applied", rule.id, row["version"])
            return
        await store.write_rule(conn, rule_id=rule.id, version=row["version"] + 1,
                               enabled=rule.enabled, trigger=rule.trigger,
                               definition=rule.definition(), origin="file",
                               file_digest=new_digest, change="updated", actor=FILE_ACTOR,
                               note="new shipped default", now=now)

    async def current(self, conn: Conn, revision: int | None = None) -> list[StoredRule]:
        """Every rule (enabled or not), reloaded when the revision moved.
        ``revision``: the caller read it already (in the same transaction)."""
        if revision is None:
            revision = await store.rules_revision(conn)
        if revision != self._revision:
            rows = await store.all_rules(conn)
            self._rules = [StoredRule(rule, r["version"], r["origin"], r["updated_at"],
                                      r["updated_by"])
                           for r in rows if (rule := _stored_rule(r)) is not None]
            self.cancel_types = frozenset(await store.cancel_types(conn))
            self._revision = revision
        return self._rules

    async def for_trigger(self, conn: Conn, trigger: str) -> list[StoredRule]:
        return [r for r in await self.current(conn) if r.rule.trigger == trigger
                and r.rule.enabled]

    async def get(self, conn: Conn, rule_id: str) -> StoredRule:
        for stored in await self.current(conn):
            if stored.rule.id == rule_id:
                return stored
        raise NotFound("rule", rule_id)


def _stored_rule(row: Any) -> Rule | None:
    """A stored rule; None (and an error logged) for one that no longer
    validates (stored before a check was added, e.g. a delay or an amount
    beyond the limits): it does nothing until UpsertRule replaces it, rather
    than failing every event."""
    try:
        return parse_rule(dict(row["definition"]), f"rule {row['rule_id']}")
    except InvalidArgument as exc:
        log.error("rule %s (version %s) is ignored: %s; replace it with UpsertRule",
                  row["rule_id"], row["version"], exc)
        return None


async def upsert(conn: Conn, rule: Rule, *, expected_version: int, actor: str, note: str,
                 now: datetime) -> int:
    """Create or change a rule over gRPC; returns the new version.
    ``expected_version`` (when not 0) must be the current version."""
    row = await store.get_rule(conn, rule.id, lock=True)
    current = row["version"] if row else 0
    if expected_version and expected_version != current:
        raise Conflict(f"rule {rule.id} is at version {current}, not {expected_version}; "
                       "reload and retry")
    if row is not None and dict(row["definition"]) == rule.definition():
        return int(current)  # nothing changed: no new version
    await store.write_rule(conn, rule_id=rule.id, version=current + 1, enabled=rule.enabled,
                           trigger=rule.trigger, definition=rule.definition(), origin="api",
                           file_digest=row["file_digest"] if row else None,
                           change="created" if row is None else "updated", actor=actor,
                           note=note, now=now)
    return int(current + 1)


async def disable(conn: Conn, rule_id: str, *, actor: str, note: str, now: datetime) -> int:
    row = await store.get_rule(conn, rule_id, lock=True)
    if row is None:
        raise NotFound("rule", rule_id)
    if not row["enabled"]:
        return int(row["version"])
    definition: dict[str, Any] = {**dict(row["definition"]), "enabled": False}
    await store.write_rule(conn, rule_id=rule_id, version=row["version"] + 1, enabled=False,
                           trigger=row["trigger"], definition=definition, origin="api",
                           file_digest=row["file_digest"], change="disabled", actor=actor,
                           note=note, now=now)
    return int(row["version"] + 1)
