"""Registry of the emulated Bot API methods and the context each call runs in."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import bad_request
from .params import Params
from .state import EmulatorState


@dataclass
class CallContext:
    """One Bot API call: the state it acts on and the bot that makes it."""

    state: EmulatorState
    bot_id: int
    token: str
    # The chat the call acted on, for the call log; handlers set it once resolved.
    chat_id: int | str | None = None

    @property
    def bot_json(self) -> dict[str, Any]:
        """The User object of the calling bot."""
        return self.state.bot_user_json(self.bot_id)

    def chat_id_param(self, params: Params) -> int | str:
        """Read the chat_id parameter: an integer id or an ``@username``.

        Raises:
            BotApiError: 400 "chat_id is empty" or "chat not found".
        """
        value = params.string("chat_id")
        if value is None or not value.strip():
            raise bad_request("chat_id is empty")
        value = value.strip()
        self.chat_id = value
        if value.startswith("@"):
            return value
        try:
            chat_id = int(value)
        except ValueError:
            raise bad_request("chat not found") from None
        self.chat_id = chat_id
        return chat_id


@dataclass(frozen=True)
class Described:
    """A method result that Telegram sends with a description, as setWebhook does."""

    result: Any
    description: str


Handler = Callable[[CallContext, Params], Awaitable[Any]]

# Lowercased method name -> (name as documented, handler). Telegram matches method
# names without regard to case.
METHODS: dict[str, tuple[str, Handler]] = {}


def bot_method(name: str) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the Bot API method ``name``."""

    def register(handler: Handler) -> Handler:
        METHODS[name.lower()] = (name, handler)
        return handler

    return register
