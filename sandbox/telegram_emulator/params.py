"""Parameters of a Bot API call, read the way the Bot API server reads them.

Telegram accepts parameters in the query string, as
``application/x-www-form-urlencoded``, as ``multipart/form-data`` and as a JSON
body. In the form encodings every value is a string, and python-telegram-bot sends
non-string values JSON-encoded (``chat_id=123``, ``reply_markup={...}``). The typed
getters below accept both the string and the JSON form.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_request import FileField

from .errors import bad_request


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart request."""

    field_name: str
    file_name: str | None
    content_type: str | None
    data: bytes


# Values that tdlib's to_bool treats as true; anything else is false.
_TRUE_STRINGS = frozenset({"true", "yes", "1"})


class Params:
    """Typed, read-only access to the parameters of one call."""

    __slots__ = ("_files", "_values")

    def __init__(
        self,
        values: Mapping[str, Any],
        files: Mapping[str, UploadedFile] | None = None,
    ) -> None:
        self._values = dict(values)
        self._files = dict(files or {})

    def has(self, name: str) -> bool:
        """Tell whether ``name`` was given with a non-empty value."""
        value = self._values.get(name)
        return value is not None and value != ""

    def raw(self, name: str) -> Any:
        """Return the value as received, or None."""
        return self._values.get(name)

    def string(self, name: str) -> str | None:
        """Return the value as a string, or None when it is missing."""
        value = self._values.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        return json.dumps(value)

    def integer(self, name: str) -> int | None:
        """Return the value as an integer, or None when it is missing or empty.

        Like tdlib, a value that does not parse as an integer reads as 0, so the
        caller raises the error that Telegram returns for a zero id.
        """
        value = self._values.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            return 0

    def number(self, name: str) -> float | None:
        """Return the value as a float, or None when it is missing or not a number."""
        value = self._values.get(name)
        if value is None or value == "" or isinstance(value, bool):
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    def boolean(self, name: str) -> bool:
        """Return the value as a boolean; a missing value is false."""
        value = self._values.get(name)
        if isinstance(value, bool):
            return value
        if value is None:
            return False
        return str(value).strip().lower() in _TRUE_STRINGS

    def json_value(self, name: str, parse_error: str) -> Any:
        """Return the value decoded from JSON, or None when it is missing.

        Raises:
            BotApiError: 400 with ``parse_error`` when the string is not valid JSON.
        """
        value = self._values.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise bad_request(parse_error) from None

    def file(self, name: str) -> UploadedFile | None:
        """Return the uploaded file part called ``name``, or None."""
        return self._files.get(name)

    def as_dict(self) -> dict[str, Any]:
        """Return a copy of the non-file values."""
        return dict(self._values)


async def read_params(request: web.Request) -> Params:
    """Read the parameters of a Bot API request from its query string and body.

    Raises:
        BotApiError: 400 when a JSON body is not a JSON object.
    """
    values: dict[str, Any] = dict(request.query)
    files: dict[str, UploadedFile] = {}
    if request.method != "POST" or not request.body_exists:
        return Params(values)

    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise bad_request("can't parse JSON body of the request") from None
        if not isinstance(body, dict):
            raise bad_request("JSON body of the request must be an object")
        values.update(body)
        return Params(values)

    form = await request.post()
    for name, value in form.items():
        if isinstance(value, FileField):
            files[name] = UploadedFile(
                field_name=name,
                file_name=value.filename,
                content_type=value.content_type,
                data=value.file.read(),
            )
        else:
            values[name] = value
    return Params(values, files)
