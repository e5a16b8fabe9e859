"""JSON Schema of every message, for integrators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.api import openapi
from schemas.errors import FieldError
from schemas.outputs import DeadLetter, IdentityChange, ProfileUpdate, Trigger
from schemas.spend import AdSpend
from schemas.touch import TouchEvent
from schemas.webhooks import WebhookDeadLetter

__all__ = ["OPENAPI", "SCHEMAS", "export_schemas", "json_schema"]

#: File name -> model. The version in the name changes when the contract breaks.
SCHEMAS: dict[str, type[BaseModel]] = {
    "touch-event.v1.json": TouchEvent,
    "ad-spend.v1.json": AdSpend,
    "field-error.v1.json": FieldError,
    "profile-update.v1.json": ProfileUpdate,
    "identity-change.v1.json": IdentityChange,
    "dead-letter.v1.json": DeadLetter,
    "trigger.v1.json": Trigger,
    "webhook-dead-letter.v1.json": WebhookDeadLetter,
}


#: The lookup API's OpenAPI description, written beside the message schemas.
OPENAPI = "lookup-api.openapi.json"
API_VERSION = "1"


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one message, by file name."""
    schema = SCHEMAS[name].model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"idstream:{name}", **schema}


def render(name: str) -> str:
    document = openapi(API_VERSION) if name == OPENAPI else json_schema(name)
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def export_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in [*SCHEMAS, OPENAPI]:
        path = directory / name
        path.write_text(render(name), encoding="utf-8")
        written.append(path)
    return written
