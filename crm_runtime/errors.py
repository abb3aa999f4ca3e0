"""Domain errors, raised by domain and store code and mapped to gRPC status
codes in one place (the server interceptor). Messages are for the caller:
they name the field or the id and say what is wrong.

:class:`InvalidArgument` (a malformed or out-of-range field,
``INVALID_ARGUMENT``) is defined with the contracts, whose normalisation of
contact points raises it too."""

from __future__ import annotations

from crm_contracts.errors import InvalidArgument, quote

__all__ = ["AlreadyExists", "Conflict", "DomainError", "FailedPrecondition", "InvalidArgument",
           "NotFound", "quote"]


class DomainError(Exception):
    """Base of every error a caller can act on."""


class NotFound(DomainError):
    """An id that does not exist (``NOT_FOUND``)."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {quote(ident)} not found")
        self.what = what
        self.ident = ident


class AlreadyExists(DomainError):
    """Creating something that exists already (``ALREADY_EXISTS``)."""


class FailedPrecondition(DomainError):
    """The request is valid but not in the current state (``FAILED_PRECONDITION``)."""


class Conflict(DomainError):
    """An optimistic-concurrency version did not match (``ABORTED``)."""
