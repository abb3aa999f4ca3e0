"""The open CRM's contracts: every event payload the services publish, the
topics they travel on, the vocabulary both sides of an event share and the
normalisation of contact points.

Installable on its own (``pip install ./contracts``; it depends only on
pydantic, and the ``normalise`` extra adds what phone and e-mail
normalisation need), so that any Python system consuming the CRM's events
gets the same typed models the services publish with. It imports nothing
else of the CRM: the services and the runtime import it.

- :mod:`crm_contracts.base`: the payload base classes and the registry of
  CloudEvents types;
- :mod:`crm_contracts.topics`: the topic names;
- :mod:`crm_contracts.customers`, :mod:`crm_contracts.interactions`,
  :mod:`crm_contracts.loyalty`: the payloads of each service's topic;
- :mod:`crm_contracts.privacy`: the acknowledgements of an erasure, one type
  per acknowledging service's topic (imported here, so that every process
  reading those topics knows them);
- :mod:`crm_contracts.vocabulary`: channels, kinds, stages, purposes;
- :mod:`crm_contracts.money`: the bounds of an amount and of a total;
- :mod:`crm_contracts.contact_points`: phone and e-mail normalisation.
"""

from crm_contracts import privacy as privacy
from crm_contracts.base import EventPayload, StrictEventPayload, payload_class, registered_types

__all__ = ["EventPayload", "StrictEventPayload", "payload_class", "registered_types"]
