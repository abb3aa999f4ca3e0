"""ExportCustomer (data-subject access) holds everything the customers service
keeps about a customer, and nothing personal once the customer is erased."""

from __future__ import annotations

import json
import uuid
from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm_contracts.interactions import DissatisfactionSignal, SurveyResponseRecorded
from crm_runtime.events import Envelope
from services.customers.store import EXPORT_COLUMNS
from tests.support.customers import get, register, stub
from tests.support.kafka import produce_envelopes, wait_for
from tests.support.services import Running


async def _export(svc: Running, customer_id: str) -> tuple[dict[str, Any], str]:
    """The customers part of the export, and the whole document's text."""
    reply = await stub(svc).ExportCustomer(pb.ExportCustomerRequest(customer_id=customer_id),
                                           metadata=svc.metadata)
    doc = json.loads(reply.json)
    assert set(doc["services"]) == {"customers", "interactions", "loyalty"}
    assert doc["customer_id"] == doc["services"]["customers"]["customer_id"]
    return doc["services"]["customers"], reply.json


async def _buy(svc: Running, customer_id: str, amount: int) -> str:
    purchase_id = f"order-{uuid.uuid4().hex[:8]}"
    await stub(svc).RecordPurchase(pb.RecordPurchaseRequest(
        customer_id=customer_id, purchase_id=purchase_id,
        amount=pb.Money(amount_minor=amount, currency="EUR")), metadata=svc.metadata)
    return purchase_id


def _resolve(doc: Any, path: str) -> bool:
    """Whether ``path`` (``key``, ``key[]``, ``key[].field``) has a value in ``doc``."""
    head, _, rest = path.partition(".")
    key, is_list = head.removesuffix("[]"), head.endswith("[]")
    if not isinstance(doc, dict) or key not in doc:
        return False
    value = doc[key]
    if is_list:
        if not isinstance(value, list) or not value:
            return False
        return all(_resolve(entry, rest) for entry in value) if rest else True
    return _resolve(value, rest) if rest else True


async def test_export_after_merge_link_risk_and_close_holds_it_all_and_erasure_empties_it(
        svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    personal = {"name": f"Ana {tag}", "dup_name": f"Ana dup {tag}",
                "email": f"ana-{tag}@example.com", "other_email": f"ana.b-{tag}@example.com",
                "phone": "+34911" + str(int(tag, 16) % 1_000_000).zfill(6),
                "external": f"pos:{tag}", "company": f"Acme {tag}",
                "notes": f"prefers mornings {tag}", "role": f"buys_for_{tag}",
                "source": f"signup-form-{tag}"}
    ana = (await register(svc, display_name=personal["name"], emails=[personal["email"]],
                          phones=[personal["phone"]], external_ids=[personal["external"]],
                          profile=pb.Profile(birth_year=1985, sex="f",
                                             personality_notes=personal["notes"],
                                             socio_economic_band=tag,
                                             concomitant_needs=["home_delivery"]))).customer
    dup = (await register(svc, display_name=personal["dup_name"],
                          emails=[personal["other_email"]])).customer
    company = (await register(svc, display_name=personal["company"], profile=pb.Profile(
        buyer_type="company", company_name=personal["company"]))).customer
    await stub(svc).SetConsent(pb.SetConsentRequest(
        customer_id=ana.customer_id, purpose="newsletter", granted=True,
        source=personal["source"]), metadata=svc.metadata)
    bought = [await _buy(svc, ana.customer_id, 1500), await _buy(svc, dup.customer_id, 2500)]
    # A contact the gate counted for the duplicate: the survivor's after the merge.
    await stub(svc).ReserveContacts(pb.ReserveContactsRequest(contacts=[pb.ContactRequest(
        contact_id=f"call-{tag}", customer_id=dup.customer_id, purpose="service",
        channel="phone", service="interactions")]), metadata=svc.metadata)
    await stub(svc).MergeCustomers(pb.MergeCustomersRequest(
        survivor_customer_id=ana.customer_id, merged_customer_id=dup.customer_id),
        metadata=svc.metadata)
    await stub(svc).LinkCustomers(pb.LinkCustomersRequest(
        requester_customer_id=ana.customer_id, decision_maker_customer_id=company.customer_id,
        role=personal["role"]), metadata=svc.metadata)
    await stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=f"band-{tag}", filter_json=json.dumps(
            {"field": "profile.socio_economic_band", "op": "=", "value": tag})),
        metadata=svc.metadata)
    now = svc.clock.now()
    signal = Envelope(data=DissatisfactionSignal(
        customer_id=ana.customer_id, reason="breached_promise", occurred_at=now),
        subject=ana.customer_id, source="/crm/interactions")
    survey = Envelope(data=SurveyResponseRecorded(
        survey_response_id=str(uuid.uuid4()), customer_id=ana.customer_id,
        touchpoint="delivery", channel="web", csat=3, nps=6, occurred_at=now),
        subject=ana.customer_id, source="/crm/interactions")
    await produce_envelopes(svc.runner.settings.kafka_bootstrap_servers or "", [signal, survey])

    async def signals_seen() -> bool:
        c = await get(svc, ana.customer_id)
        return c.at_risk and c.last_nps == 6

    await wait_for(signals_seen, what="the risk signal and the survey answer applied")
    await stub(svc).CloseRelationship(pb.CloseRelationshipRequest(
        customer_id=ana.customer_id, reason="moving abroad"), metadata=svc.metadata)

    doc, _ = await _export(svc, ana.customer_id)
    assert doc["customer_id"] == ana.customer_id
    assert doc["display_name"] == personal["name"]
    assert sorted(doc["emails"]) == sorted([personal["email"], personal["other_email"]])
    assert doc["phones"] == [personal["phone"]] and doc["external_ids"] == [personal["external"]]
    assert doc["profile"]["personality_notes"] == personal["notes"]
    assert doc["merged_aliases"] == [dup.customer_id]
    assert [(link["as"], link["other_customer_id"], link["role"]) for link in doc["links"]] == [
        ("requester", company.customer_id, personal["role"])]
    assert doc["links"][0]["created_at"]
    assert doc["at_risk"] is True and doc["risk_reasons"] == ["breached_promise"]
    assert [(s["reason"], s["event_id"]) for s in doc["risk_signals"]] == [
        ("breached_promise", signal.id)]
    assert (doc["last_csat"], doc["last_nps"]) == (3, 6) and doc["last_survey_at"]
    assert doc["stage"] == "former" and doc["closed_at"]
    assert [(h["from"], h["to"], h["cause"]) for h in doc["stage_history"]] == [
        ("potential", "one_time", "purchase"), ("potential", "one_time", "purchase"),
        ("one_time", "repeat", "merged"), ("repeat", "former", "closed")]
    assert sorted(p["purchase_id"] for p in doc["purchases"]) == sorted(bought)
    assert all(p["causing_event_id"] for p in doc["purchases"])
    assert doc["total_spent"] == [{"currency": "EUR", "amount_minor": 4000}]
    assert [(c["purpose"], c["granted"], c["source"]) for c in doc["consents"]] == [
        ("newsletter", True, personal["source"])]
    assert doc["segments"] == [f"band-{tag}"]
    assert [(c["contact_id"], c["purpose"], c["service"]) for c in doc["contacts"]] == [
        (f"call-{tag}", "service", "interactions")]
    # Every column the export claims to cover is in the document.
    missing = [f"{table}.{column} -> {path}" for table, columns in EXPORT_COLUMNS.items()
               for column, path in columns.items() if not _resolve(doc, path)]
    assert not missing
    # The merged id exports its survivor; the other side of a link sees it too.
    assert (await _export(svc, dup.customer_id))[0]["customer_id"] == ana.customer_id
    company_doc, _ = await _export(svc, company.customer_id)
    assert [(link["as"], link["other_customer_id"]) for link in company_doc["links"]] == [
        ("decision_maker", ana.customer_id)]

    await stub(svc).EraseCustomer(pb.EraseCustomerRequest(customer_id=ana.customer_id),
                                  metadata=svc.metadata)
    doc, text = await _export(svc, ana.customer_id)
    leaked = [what for what, value in personal.items() if value in text]
    assert not leaked, f"personal data left after erasure: {leaked}"
    assert doc["display_name"] == "" and doc["profile"] == {}
    assert doc["emails"] == doc["phones"] == doc["external_ids"] == []
    assert doc["consents"] == [] and doc["links"] == [] and doc["segments"] == []
    assert doc["contacts"] == []
    assert doc["erased_at"] and doc["do_not_contact"] is True
    # The id, stage and counts stay.
    assert doc["stage"] == "former" and doc["purchase_count"] == 2
    company_doc, company_text = await _export(svc, company.customer_id)
    assert company_doc["links"] == [] and personal["role"] not in company_text
