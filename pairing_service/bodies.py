"""Reading request bodies within a size limit, and checking JSON fields."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pairing_service.errors import ApiError

MAX_JSON_BYTES = 16 * 1024
"""The largest JSON body of any endpoint is a few hundred bytes; 16 KiB leaves
room and keeps a flood of large bodies cheap to reject."""


async def read_limited(
    request: web.Request, limit: int, *, code: str = "payload_too_large"
) -> bytes:
    """Read the whole body, or raise a 413 ApiError as soon as it passes ``limit``.

    The declared ``Content-Length`` is checked first, so an honest client that
    sends too much is rejected before anything is read.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(
            413, code, f"the body is {declared} bytes; the limit is {limit} bytes"
        )

    chunks: list[bytes] = []
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if received > limit:
            raise ApiError(413, code, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(
    request: web.Request, *, allow_empty: bool = False
) -> dict[str, Any]:
    """Read the body as a JSON object.

    A body must come as ``application/json`` (or a ``+json`` type) in UTF-8.
    A browser sends ``text/plain`` to another site without asking first, so
    refusing other types keeps a web page from posting here for its visitor.

    Raises:
        ApiError: 400 ``invalid_json`` when the body is not a JSON object, 413
            when it is over ``MAX_JSON_BYTES``, 415 ``unsupported_media_type``
            when a body comes with another type or character set.
    """
    raw = await read_limited(request, MAX_JSON_BYTES)
    if not raw.strip() and allow_empty:
        return {}
    _require_json_type(request)
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return document


def _require_json_type(request: web.Request) -> None:
    media_type = request.content_type.lower()
    charset = (request.charset or "utf-8").lower()
    is_json = media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    if is_json and charset in ("utf-8", "utf8"):
        return
    if is_json:
        message = f"the JSON body must be UTF-8, not {charset!r}"
    else:
        # aiohttp reports a missing Content-Type as application/octet-stream.
        message = f"the body must be sent as application/json, not {media_type!r}"
    raise ApiError(415, "unsupported_media_type", message)


def string_field(
    document: dict[str, Any],
    name: str,
    *,
    choices: tuple[str, ...] | None = None,
    required: bool = True,
    default: str | None = None,
) -> str | None:
    """Return a string field, checked against ``choices`` when given.

    Raises:
        ApiError: 422 ``invalid_field`` naming the field.
    """
    value = document.get(name)
    if value is None:
        if required:
            raise ApiError(422, "invalid_field", f"field {name!r} is missing")
        return default
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"field {name!r} must be a string")
    if choices is not None and value not in choices:
        raise ApiError(
            422,
            "invalid_field",
            f"field {name!r} must be one of {', '.join(choices)}",
        )
    return value


def bool_field(document: dict[str, Any], name: str) -> bool:
    """Return a required boolean field.

    Raises:
        ApiError: 422 ``invalid_field`` naming the field.
    """
    value = document.get(name)
    if not isinstance(value, bool):
        raise ApiError(422, "invalid_field", f"field {name!r} must be true or false")
    return value
