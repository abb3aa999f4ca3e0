"""Event payloads and the registry of their CloudEvents types.

A payload is a pydantic model registered with :func:`event` under its
CloudEvents type (a past-tense fact such as ``customer.registered``) and the
topic it belongs to. Importing a payload module registers its types;
:func:`payload_class` finds the model of a type read off the wire."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict


class EventPayload(BaseModel):
    """Base of every event payload: immutable, and a tolerant reader: a field
    it does not know is ignored, so a producer may add an optional field
    before every consumer knows it (a rolling upgrade, a consumer not ours).
    Payloads that other systems write (the ingest topic) are strict instead,
    see :class:`StrictEventPayload`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    topic: ClassVar[str]


class StrictEventPayload(EventPayload):
    """A payload other systems write: an unknown field is refused (a dead
    letter naming it), so a channel's typo is caught, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid")


P = TypeVar("P", bound=EventPayload)

_REGISTRY: dict[str, type[EventPayload]] = {}


def event(event_type: str, *, topic: str) -> Callable[[type[P]], type[P]]:
    """Register a payload model under its CloudEvents type and topic."""

    def register(cls: type[P]) -> type[P]:
        existing = _REGISTRY.get(event_type)
        # The same class imported twice (``python -m`` re-imports) is fine.
        if existing is not None and _origin(existing) != _origin(cls):
            raise ValueError(f"event type {event_type!r} registered twice: by {_origin(existing)}"
                             f" and by {_origin(cls)}")
        cls.event_type = event_type
        cls.topic = topic
        _REGISTRY[event_type] = cls
        return cls

    return register


def _origin(cls: type) -> str:
    module = cls.__module__
    if module == "__main__":
        import __main__

        module = getattr(__main__.__spec__, "name", module) if __main__.__spec__ else module
    return f"{module}.{cls.__qualname__}"


def payload_class(event_type: str) -> type[EventPayload] | None:
    """The model registered for ``event_type``, if any."""
    return _REGISTRY.get(event_type)


def registered_types() -> dict[str, type[EventPayload]]:
    """Every registered type and its model."""
    return dict(_REGISTRY)
