"""Shared test helpers: building touches tersely and finding the shared test data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from identity import CrmInfo, Touch, TouchType, Utm
from identity.touch import AttributeValue

SHARED_TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def touch(
    event_id: str,
    minute: float,
    *identifiers: tuple[str, str],
    type: str = "site_visit",
    source: str = "site",
    attributes: Mapping[str, AttributeValue] | None = None,
    utm: Utm | None = None,
    crm: CrmInfo | None = None,
) -> Touch:
    """A touch ``minute`` minutes after T0 with raw identifiers."""
    return Touch(
        event_id=event_id,
        type=TouchType(type),
        occurred_at=T0 + timedelta(minutes=minute),
        source=source,
        identifiers=tuple(identifiers),
        attributes=dict(attributes or {}),
        utm=utm,
        crm=crm,
    )


def shared_file(*parts: str) -> Path:
    path = SHARED_TESTDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (it lives beside the repository in ../shared)")
    return path


def partition(persons: Mapping[str, frozenset[object]]) -> set[frozenset[object]]:
    return set(persons.values())


def ids(*pairs: Sequence[str]) -> frozenset[tuple[str, str]]:
    return frozenset((k, v) for k, v in pairs)
