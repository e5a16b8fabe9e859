"""Machine-readable errors for messages that do not match the wire contract."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from identity.errors import InvalidInput

__all__ = ["FieldError", "InvalidMessage", "decode"]

M = TypeVar("M", bound=BaseModel)


class FieldError(BaseModel):
    """One problem with one field. ``field`` is a dotted path (``identifiers.3.value``)."""

    model_config = ConfigDict(frozen=True)

    field: str
    code: str
    message: str


class InvalidMessage(InvalidInput):
    """A message that does not match the wire contract; ``errors`` names every bad field."""

    code = "invalid_message"

    def __init__(self, errors: list[FieldError]) -> None:
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid message: {summary}{more}")
        self.errors = errors

    @classmethod
    def single(cls, field: str, code: str, message: str) -> InvalidMessage:
        return cls([FieldError(field=field, code=code, message=message)])

    @classmethod
    def from_validation_error(cls, exc: ValidationError) -> InvalidMessage:
        errors = [
            FieldError(
                field=".".join(str(part) for part in err["loc"]) or "(message)",
                code=err["type"],
                message=err["msg"],
            )
            for err in exc.errors(include_url=False, include_input=False)
        ]
        return cls(errors)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "errors": [e.model_dump() for e in self.errors]}


def decode(model: type[M], raw: bytes | str, limit: int) -> M:
    """Decode one JSON message into ``model``, or raise :class:`InvalidMessage` naming every bad field.

    Never raises anything else for any input: not JSON, invalid UTF-8, deep nesting, wrong types and
    messages over ``limit`` bytes all become ``InvalidMessage``.
    """
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > limit:
        raise InvalidMessage.single("(message)", "too_large", f"message is {size} bytes; the limit is {limit}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidMessage.from_validation_error(exc) from None
    except (ValueError, RecursionError) as exc:  # defensive: the parser's own limits
        raise InvalidMessage.single("(message)", "json_invalid", str(exc)[:200]) from None
