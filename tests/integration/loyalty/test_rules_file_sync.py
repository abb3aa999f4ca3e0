"""The rules file at start: new rules are created, a changed shipped default
is applied as a new version, an operator's change over gRPC is kept."""

from __future__ import annotations

from crm.loyalty.v1 import loyalty_pb2 as pb
from services.loyalty.rulebook import RuleBook
from services.loyalty.rules import parse_rule
from tests.support.loyalty import stub
from tests.support.services import Running


def _file_rule(percent: int) -> dict[str, object]:
    # Disabled: it must not act on the events of other tests.
    return {"id": "sync-test", "enabled": False, "trigger": "customer.won_back",
            "actions": [{"type": "discount", "percent": percent}]}


async def test_file_rules_are_versioned_and_operator_changes_win(svc: Running) -> None:
    pool = svc.runner.pool
    assert pool is not None
    now = svc.clock.now()

    async def stored() -> pb.Rule:
        rules = await stub(svc).ListRules(pb.ListRulesRequest(trigger="customer.won_back"),
                                          metadata=svc.metadata)
        found: pb.Rule = next(r for r in rules.rules if r.rule_id == "sync-test")
        return found

    await RuleBook([parse_rule(_file_rule(5))]).sync_file(pool, now)
    first = await stored()
    assert (first.version, first.origin, first.updated_by) == (1, "file", "rules.yaml")
    await RuleBook([parse_rule(_file_rule(5))]).sync_file(pool, now)  # unchanged: no version
    assert (await stored()).version == 1
    await RuleBook([parse_rule(_file_rule(6))]).sync_file(pool, now)  # a new release
    assert ((await stored()).version, (await stored()).origin) == (2, "file")

    mine = parse_rule(_file_rule(9)).model_dump_json()
    changed = await stub(svc).UpsertRule(pb.UpsertRuleRequest(
        definition=mine, expected_version=2, changed_by="ops-ana", note="more generous"),
        metadata=svc.metadata)
    assert (changed.version, changed.origin, changed.updated_by) == (3, "api", "ops-ana")
    await RuleBook([parse_rule(_file_rule(7))]).sync_file(pool, now)  # the next release
    kept = await stored()
    assert kept.version == 3 and '"percent": 9' in kept.definition_json
    async with pool.acquire() as conn:
        changes = await conn.fetch(
            "SELECT version, change, actor FROM rule_changes WHERE rule_id = 'sync-test'"
            " ORDER BY version")
    assert [(c["version"], c["change"], c["actor"]) for c in changes] == [
        (1, "created", "rules.yaml"), (2, "updated", "rules.yaml"), (3, "updated", "ops-ana")]
