"""Messages about webhook delivery: the dead letter written when an endpoint never accepted a message."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["WebhookDeadLetter"]


class WebhookDeadLetter(BaseModel):
    """One message on the webhook dead-letter topic: a message an endpoint never accepted, and why.

    ``endpoint`` is the endpoint's configured name (never its URL or secret). ``delivery_id`` is the
    ``X-Idstream-Delivery`` header every attempt carried, so a redelivery can be deduplicated by the
    receiver. ``value_utf8`` is the original message body, ready to be sent again as is.
    """

    model_config = ConfigDict(title="WebhookDeadLetter", extra="forbid")

    endpoint: str = Field(description="The endpoint's name; never its URL or secret.")
    topic: str = Field(description="The Kafka topic the message came from.")
    delivery_id: str = Field(description="The X-Idstream-Delivery header of every attempt.")
    attempts: int = Field(ge=0, description="HTTP attempts made; 0 when the message was refused before sending.")
    last_status: int | None = Field(description="The last HTTP status received; null when none was.")
    last_error: str = Field(description="Why the last attempt failed, without secrets or URL credentials.")
    failed_at: str = Field(description="When delivery was given up, ISO-8601 in UTC.")
    value_utf8: str = Field(description="The original message body (undecodable bytes replaced by U+FFFD).")
