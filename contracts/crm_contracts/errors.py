"""The one error the contracts raise."""

from __future__ import annotations


class InvalidArgument(ValueError):
    """A value that is malformed or out of range: names the field and the
    problem. The services answer it as gRPC ``INVALID_ARGUMENT`` with a field
    violation."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


#: How much of a bad value an error message quotes.
QUOTE_LIMIT = 40


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A bad value for an error message: its ``repr``, cut to a short prefix,
    so an error never echoes back a huge input."""
    text = value if isinstance(value, str) else str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")
