"""Reading vendors' loosely named fields: case-insensitive names with aliases, times in an account's zone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.connectors import MappingError

__all__ = ["UTM_TAGS", "Fields", "parse_time"]

#: The UTM tags of the wire format, as vendors name them after ``utm_``.
UTM_TAGS = ("source", "medium", "campaign", "content", "term")

_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%d.%m.%Y %H:%M:%S")


class Fields:
    """A flat payload read by any of several names, ignoring case and ``_``."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.payload = payload
        self._by_name = {self._fold(k): k for k in payload}

    @staticmethod
    def _fold(name: str) -> str:
        return name.replace("_", "").replace("-", "").lower()

    def raw(self, *names: str) -> Any:
        for name in names:
            key = self._by_name.get(self._fold(name))
            if key is not None:
                value = self.payload[key]
                if value is not None and value != "":
                    return value
        return None

    def text(self, *names: str) -> str | None:
        value = self.raw(*names)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None
        text = str(value).strip().strip('"').strip()
        return text or None

    def number(self, *names: str) -> float | None:
        value = self.raw(*names)
        if isinstance(value, bool):
            return None
        try:
            number = float(str(value).replace(",", ".")) if value is not None else None
        except ValueError:
            shown = ", ".join(names)
            raise MappingError(f"{shown}: {str(value)[:32]!r} is not a number") from None
        return number if number is None or number >= 0 else None

    def flag(self, *names: str) -> bool | None:
        value = self.raw(*names)
        if isinstance(value, bool):
            return value
        if value is None:
            return None
        text = str(value).strip().strip('"').lower()
        if text in ("true", "1", "yes", "y", "да", "successful", "success"):
            return True
        if text in ("false", "0", "no", "n", "нет", "unsuccessful", "failed", "fail"):
            return False
        return None

    def utm(self) -> dict[str, str]:
        """The ``utm_*`` fields given, by tag (each at most 1,024 characters)."""
        return {tag: value[:1024] for tag in UTM_TAGS if (value := self.text(f"utm_{tag}"))}

    def names(self) -> Sequence[str]:
        return list(self.payload)


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "Europe/Moscow")
    except (ZoneInfoNotFoundError, ValueError):
        raise MappingError(f"unknown time zone {str(name)[:64]!r}") from None


def parse_time(value: Any, tz: ZoneInfo, *, field: str) -> datetime | None:
    """A vendor's time: Unix seconds, ISO-8601, or a local ``YYYY-MM-DD HH:MM:SS`` in the account's zone."""
    if value is None or value == "":
        return None
    text = str(value).strip().strip('"')
    if text.replace(".", "", 1).isdecimal() and text.isascii():
        seconds = float(text)
        if seconds > 1e11:  # milliseconds
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise MappingError(f"{field}: {text[:40]!r} is not a time this receiver reads") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
        for fmt in _TIME_FORMATS:
            try:
                parsed = datetime.strptime(text, fmt)  # noqa: DTZ007 - the zone is the account's, set below
                break
            except ValueError:
                continue
    if parsed is None:
        raise MappingError(f"{field}: {text[:40]!r} is not a time this receiver reads")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)
