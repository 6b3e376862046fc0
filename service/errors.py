"""The service's exceptions: one root, domain errors raised by the db layer and turned into HTTP
errors only in the API layer."""

from __future__ import annotations


class SharpmixError(Exception):
    """Root of every error the service raises on purpose."""


class NotFoundError(SharpmixError):
    """The object does not exist, or belongs to another tenant (callers cannot tell which)."""


class ConflictError(SharpmixError):
    """The request disagrees with what is stored (for example an Idempotency-Key reused with a
    different body)."""


class IdempotencyMismatchError(ConflictError):
    """An Idempotency-Key was used before with a different request body. A conflict in the store,
    but the fault is in the request, so the API answers 422 rather than 409."""


class InvalidRequestError(SharpmixError):
    """A value the user sent cannot be used.

    Attributes:
        field: Dotted name of the field at fault, as the user wrote it.
        location: Where the field came from: ``body``, ``query`` or ``header``.
    """

    def __init__(self, field: str, message: str, *, location: str = "body") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.location = location


class AuthenticationError(SharpmixError):
    """Missing, unknown or revoked API key."""


class DatabaseError(SharpmixError):
    """The database could not be reached or refused an operation; says what to check."""
