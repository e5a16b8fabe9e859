"""The interface every identity store implements (in memory: IdentityGraph; Redis: streams.redis_store).

One contract test suite (tests/test_store_contract.py) runs against every implementation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from identity.graph import ApplyResult, Match
from identity.normalize import Identifier
from identity.touch import Touch

__all__ = ["IdentityStore"]


class IdentityStore(Protocol):
    def apply_batch(self, touches: Sequence[Touch]) -> list[ApplyResult]:
        """Apply touches in the given order; all of them or, on an error raised before any write, none."""

    def lookup(self, ident: Identifier) -> str | None:
        """The profile id of the person holding a normalized identifier."""

    def lookup_raw(self, kind: str, raw: str) -> str | None:
        """Normalize a raw value the same way as the stream, then look it up."""

    def match(self, ident: Identifier) -> Match | None:
        """The holder of a normalized identifier and every person contesting it."""

    def resolve(self, profile_id: str) -> str | None:
        """The live id for a profile id, following redirects of retired ids."""

    def profile(self, profile_id: str) -> dict[str, Any] | None:
        """The golden profile of a live or retired id."""

    def persons(self) -> dict[str, frozenset[Identifier]]:
        """The partition: profile id -> its identifiers."""

    def profiles(self) -> Iterator[dict[str, Any]]:
        """Every golden profile, by profile id."""
