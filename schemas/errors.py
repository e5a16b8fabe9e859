"""Machine-readable errors for messages that do not match the wire contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from identity.errors import InvalidInput

__all__ = ["MAX_ERRORS", "FieldError", "InvalidMessage", "decode", "field_path"]

M = TypeVar("M", bound=BaseModel)

#: Errors listed per message (the message says how many more there were): a bounded dead letter.
MAX_ERRORS = 20
#: Longest field path named: an attribute's name can be 60 KB, and it is not echoed back whole.
MAX_FIELD_CHARS = 100


def field_path(loc: Sequence[int | str]) -> str:
    """A validation error's location as a dotted path (``identifiers.3.value``), cut to a readable length."""
    path = ".".join(str(part) for part in loc)
    return path if len(path) <= MAX_FIELD_CHARS else f"{path[: MAX_FIELD_CHARS - 1]}…"


class FieldError(BaseModel):
    """One problem with one field. ``field`` is a dotted path (``identifiers.3.value``)."""

    model_config = ConfigDict(frozen=True)

    field: str
    code: str
    message: str


class InvalidMessage(InvalidInput):
    """A message that does not match the wire contract; ``errors`` names the bad fields.

    At most :data:`MAX_ERRORS` are listed, the message saying how many more there were.
    """

    code = "invalid_message"

    def __init__(self, errors: list[FieldError], total: int | None = None) -> None:
        """``errors`` as listed; ``total`` counts those left out too (by :meth:`from_validation_error`)."""
        total = len(errors) if total is None else total
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        more = f" (+{total - 5} more)" if total > 5 else ""
        super().__init__(f"invalid message: {summary}{more}")
        self.errors = errors

    @classmethod
    def single(cls, field: str, code: str, message: str) -> InvalidMessage:
        return cls([FieldError(field=field, code=code, message=message)])

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> InvalidMessage:
        """The first :data:`MAX_ERRORS` errors, each field path cut short: nothing of a huge input is echoed."""
        found = exc.errors(include_url=False, include_input=False, include_context=False)
        errors = [
            FieldError(field=field_path(err["loc"]) or "(message)", code=err["type"], message=err["msg"][:300])
            for err in found[:MAX_ERRORS]
        ]
        return cls(errors, total=len(found))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": [e.model_dump() for e in self.errors]}


def decode(model: type[M], raw: bytes | str, limit: int) -> M:
    """Decode one JSON message into ``model``, or raise :class:`InvalidMessage` naming every bad field.

    Never raises anything else for any input: not JSON, invalid UTF-8, deep nesting, wrong types and
    messages over ``limit`` bytes all become ``InvalidMessage``.
    """
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate: text no UTF-8 byte sequence can carry
            raise InvalidMessage.single(
                "(message)", "json_invalid", f"message is not valid Unicode: a lone surrogate at character {exc.start}"
            ) from None
    size = len(raw)
    if size > limit:
        raise InvalidMessage.single("(message)", "too_large", f"message is {size} bytes; the limit is {limit}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidMessage.from_validation_error(exc) from None
    except (ValueError, RecursionError) as exc:  # defensive: the parser's own limits
        raise InvalidMessage.single("(message)", "json_invalid", str(exc)[:200]) from None
