"""Reading a vendor's API from a webhook receiver: one GET, its errors mapped to idstream's here."""

from __future__ import annotations

from typing import Any

import aiohttp

from identity import TransientError
from streams.connectors import MappingError

__all__ = ["CrmApiUnavailable", "get_json"]


class CrmApiUnavailable(TransientError):
    """The vendor's API did not answer, or refused the credentials: the webhook is answered 503 and the vendor
    sends it again (the credentials are the operator's to fix; nothing of the event is lost)."""

    code = "crm_api_unavailable"


async def get_json(
    url: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> dict[str, Any] | None:
    """One JSON object, or None when the API has none (204, 404)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, params=params, headers=headers) as response,
        ):
            if response.status in (204, 404):
                return None
            if response.status != 200:
                raise CrmApiUnavailable(f"the CRM's API answered {response.status}")
            body = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise CrmApiUnavailable(f"the CRM's API is unavailable ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise MappingError("the CRM's API answered something that is not an object")
    return body
