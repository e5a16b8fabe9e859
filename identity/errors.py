"""The one error hierarchy of idstream.

Every error raised on purpose by idstream derives from :class:`IdstreamError` and
says, through :attr:`IdstreamError.retriable`, whether trying the same operation
again may succeed. A stream worker retries retriable errors with backoff and
dead-letters (or stops on) the others; it never lets one escape its loop.

::

    IdstreamError
    ├── InvalidInput              (not retriable) bad data from a client or a topic
    │   ├── InvalidIdentifier     one identifier value that cannot be used
    │   └── UnsupportedEvent      a well-formed event the core cannot apply yet
    ├── ConfigurationError        (not retriable) the operator's settings are wrong
    └── TransientError            (retriable) a dependency is briefly unavailable

The core (`identity/`) defines the hierarchy so that every other package can share
it without the core importing them.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "IdstreamError",
    "InvalidIdentifier",
    "InvalidInput",
    "TransientError",
    "UnsupportedEvent",
]


class IdstreamError(Exception):
    """Root of all idstream errors.

    ``code`` is a short machine-readable name; ``retriable`` tells a caller
    whether the same operation may succeed later.
    """

    code: ClassVar[str] = "idstream_error"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, for dead-letter records and API answers."""
        return {"code": self.code, "message": self.message, "retriable": self.retriable}


class InvalidInput(IdstreamError):
    """Input that will never be accepted as it is: retrying cannot help."""

    code = "invalid_input"


class InvalidIdentifier(InvalidInput):
    """One identifier value that cannot be used; ``reason`` names the rule it broke."""

    code = "invalid_identifier"

    def __init__(self, kind: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kind": self.kind, "reason": self.reason}


class UnsupportedEvent(InvalidInput):
    """A well-formed event whose type this version of the core does not apply."""

    code = "unsupported_event"


class ConfigurationError(IdstreamError):
    """The operator's settings are inconsistent; the process should not start."""

    code = "configuration_error"


class TransientError(IdstreamError):
    """A dependency (Redis, Kafka, a webhook) failed in a way that may pass."""

    code = "transient"
    retriable = True
