"""Bot API errors in the format that Telegram returns them."""

from typing import Any


class BotApiError(Exception):
    """A failed Bot API call, returned as ``{"ok": false, "error_code": ..., ...}``.

    ``description`` is the full text that Telegram sends, prefix included
    (``"Bad Request: chat not found"``). ``parameters`` becomes the optional
    ResponseParameters object of the answer.
    """

    def __init__(
        self,
        error_code: int,
        description: str,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def to_json(self) -> dict[str, Any]:
        """Build the JSON body of the error response."""
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(reason: str) -> BotApiError:
    """Build a 400 error; ``reason`` is the text after ``"Bad Request: "``."""
    return BotApiError(400, f"Bad Request: {reason}")


def forbidden(reason: str) -> BotApiError:
    """Build a 403 error; ``reason`` is the text after ``"Forbidden: "``."""
    return BotApiError(403, f"Forbidden: {reason}")


def conflict(reason: str) -> BotApiError:
    """Build a 409 error; ``reason`` is the text after ``"Conflict: "``."""
    return BotApiError(409, f"Conflict: {reason}")


def too_many_requests(retry_after: int) -> BotApiError:
    """Build the 429 error that makes the bot wait ``retry_after`` seconds."""
    return BotApiError(
        429,
        f"Too Many Requests: retry after {retry_after}",
        {"retry_after": retry_after},
    )


def unauthorized() -> BotApiError:
    """Build the 401 error for a token that is not of the form ``<bot id>:<secret>``."""
    return BotApiError(401, "Unauthorized")


def method_not_found() -> BotApiError:
    """Build the 404 error for a method name that the emulator does not know."""
    return BotApiError(404, "Not Found: method not found")


# Descriptions that several methods share, as Telegram words them.
CHAT_NOT_FOUND = "chat not found"
BOT_BLOCKED = "bot was blocked by the user"
CANT_INITIATE = "bot can't initiate conversation with a user"
MESSAGE_TO_EDIT_NOT_FOUND = "message to edit not found"
MESSAGE_NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = "query is too old and response timeout expired or query ID is invalid"
