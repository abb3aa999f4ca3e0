"""Event payloads and the registry of their CloudEvents types.

A payload is a pydantic model registered with :func:`event` under its
CloudEvents type (a past-tense fact such as ``customer.registered``) and the
topic it belongs to. Importing a payload module registers its types;
:func:`payload_class` finds the model of a type read off the wire."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from operator import itemgetter
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError


class EventPayload(BaseModel):
    """Base of every event payload: immutable, and a tolerant reader: a field
    it does not know is ignored, so a producer may add an optional field
    before every consumer knows it (a rolling upgrade, a consumer not ours).
    Payloads that other systems write (the ingest topic) are strict instead,
    see :class:`StrictEventPayload`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    topic: ClassVar[str]


#: The longest text other systems may write in a field without a limit of its
#: own: the same default as every gRPC request field (docs/integration.md,
#: "Limits").
MAX_TEXT = 200
#: A text field of a payload other systems write.
Text = Annotated[str, Field(max_length=MAX_TEXT)]


class StrictEventPayload(EventPayload):
    """A payload other systems write: an unknown field is refused (a dead
    letter naming it), so a channel's typo is caught, not silently dropped;
    so is a NUL character (``\\x00``) in any text field (see
    :func:`refuse_nul`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The values of the fields declared ``str``, from a model's ``__dict__``
    #: (set per class).
    _texts: ClassVar[Callable[[dict[str, Any]], tuple[str, ...]]] = staticmethod(
        lambda values: ())
    #: The names of the fields that may hold texts otherwise (a list of them).
    _others: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        fields = cls.model_fields
        cls._texts = staticmethod(_values_of([n for n, f in fields.items() if f.annotation is str]))
        cls._others = tuple(n for n, f in fields.items()
                            if f.annotation not in (str, *_NO_TEXT))

    @model_validator(mode="after")
    def _no_nul(self) -> StrictEventPayload:
        values = self.__dict__
        # One search of all the texts at once (the common case: no NUL).
        if "\x00" in "".join(type(self)._texts(values)):
            refuse_nul(self)
        for name in self._others:
            _refuse_nul_in(self, name, values[name])
        return self


#: Field types that hold no text.
_NO_TEXT = (int, float, bool, datetime, date)


def _values_of(names: list[str]) -> Callable[[dict[str, Any]], tuple[str, ...]]:
    """A function giving the values of ``names`` from a dict, as a tuple
    (``itemgetter``: one C call, for two names or more)."""
    if len(names) > 1:
        return itemgetter(*names)
    if names:
        name = names[0]
        return lambda values: (values[name],)
    return lambda values: ()


#: The error type of a text field holding a NUL character.
NUL_ERROR = "nul_character"


def refuse_nul(model: BaseModel) -> None:
    """Refuse a NUL character (``\\x00``) in any text field of ``model``
    (strings, and strings in lists): no database text column stores one, and
    no channel means one. The validation error names the field, as any other
    does (``notes: contains a NUL character (\\x00)``)."""
    for name, value in model.__dict__.items():
        _refuse_nul_in(model, name, value)


def _refuse_nul_in(model: BaseModel, name: str, value: object) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            _nul_error(model, (name,), value)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if isinstance(item, str) and "\x00" in item:
                _nul_error(model, (name, i), item)


def _nul_error(model: BaseModel, loc: tuple[str | int, ...], value: str) -> None:
    raise ValidationError.from_exception_data(type(model).__name__, [InitErrorDetails(
        type=PydanticCustomError(NUL_ERROR, "contains a NUL character (\\x00)"),
        loc=loc, input=value)])


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
