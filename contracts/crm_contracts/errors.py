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
