"""JSON Schema of every message, for integrators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.errors import FieldError
from schemas.outputs import DeadLetter, IdentityChange, ProfileUpdate
from schemas.touch import TouchEvent

__all__ = ["SCHEMAS", "export_schemas", "json_schema"]

#: File name -> model. The version in the name changes when the contract breaks.
SCHEMAS: dict[str, type[BaseModel]] = {
    "touch-event.v1.json": TouchEvent,
    "field-error.v1.json": FieldError,
    "profile-update.v1.json": ProfileUpdate,
    "identity-change.v1.json": IdentityChange,
    "dead-letter.v1.json": DeadLetter,
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one message, by file name."""
    schema = SCHEMAS[name].model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"idstream:{name}", **schema}


def render(name: str) -> str:
    return json.dumps(json_schema(name), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def export_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SCHEMAS:
        path = directory / name
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written
