"""The callback data of inline buttons: ``<scope>:<tag>:<action>``.

``scope`` is the step the button belongs to (a ``Step`` value) or a scope
that is valid in any step (``stop``, ``municipality``, ``language``). ``tag``
is a short tag of the case the button was made for, so a button from a
previous case is recognised after the client started again. ``action`` names
what the button does. Example: ``check_sms:1A2B:no``, 16 bytes.

The whole string stays within Telegram's 64-byte limit; ``encode`` checks it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from telegram.constants import InlineKeyboardButtonLimit

from journey.model import Case
from journey.steps import Step

SEPARATOR = ":"

CASE_TAG_LENGTH = 4
"""Hex characters of the case reference in a button: 16 bits, enough to tell
this case from the client's previous one, and too few to identify a case."""

SCOPE_STOP = "stop"
"""Scope of the /stop confirmation buttons, which hold in every open step."""

SCOPE_MUNICIPALITY = "municipality"
"""Scope of the "is this your municipality?" buttons, shown before a case
exists; their tag is the municipality's CBS code."""

SCOPE_LANGUAGE = "language"
"""Scope of the /taal buttons, which hold in every step and without a case."""

SCOPE_HELP = "help"
"""Scope of the "Ik heb hulp nodig" button, which is valid in every step."""

_PART = re.compile(r"[A-Za-z0-9_]{1,32}")


class Action(enum.StrEnum):
    """The effect of a button."""

    YES = "yes"
    NO = "no"
    START = "start"
    DONE = "done"
    """"I have arranged it now", after the help for a checklist "no"."""
    LATER = "later"
    """"Remind me later", after the help for a checklist "no"."""
    HAVE_APP = "have_app"
    RENEW = "renew"
    REFUSE = "refuse"
    """Confirmed "no" to consent: do not send, delete the package."""
    BACK = "back"
    LANGUAGE_NL = "nl"
    """Switch the conversation to Dutch (/taal)."""
    LANGUAGE_EN = "en"
    """Switch the conversation to English (/taal)."""
    HELP = "help"
    """Ask for a person's help, as /hulp does."""


@dataclass(frozen=True, slots=True)
class ButtonData:
    """Callback data, parsed."""

    scope: str
    tag: str
    action: Action

    @property
    def step(self) -> Step | None:
        """The step this button belongs to, or None for a step-independent scope."""
        try:
            return Step(self.scope)
        except ValueError:
            return None


def case_tag(case: Case) -> str:
    """Return the short tag of ``case`` that its buttons carry."""
    # The reference is "GV-" and a one-way hash of the case id in hex.
    return case.ref[3 : 3 + CASE_TAG_LENGTH]


def encode(scope: Step | str, tag: str, action: Action) -> str:
    """Build the callback data of one button.

    Raises:
        ValueError: a part contains characters outside ``[A-Za-z0-9_]`` or the
            result exceeds Telegram's 64-byte limit.
    """
    scope_text = scope.value if isinstance(scope, Step) else scope
    for part in (scope_text, tag, action.value):
        if not _PART.fullmatch(part):
            raise ValueError(f"invalid callback data part {part!r}")
    data = SEPARATOR.join((scope_text, tag, action.value))
    if len(data.encode("utf-8")) > InlineKeyboardButtonLimit.MAX_CALLBACK_DATA:
        raise ValueError(f"callback data {data!r} exceeds 64 bytes")
    return data


def encode_for(case: Case, action: Action, scope: Step | str | None = None) -> str:
    """Build the callback data of a button for ``case`` in its current step."""
    return encode(scope if scope is not None else case.step, case_tag(case), action)


def decode(data: str | None) -> ButtonData | None:
    """Parse callback data; None when it is not of this format (a stale button)."""
    if not data:
        return None
    parts = data.split(SEPARATOR)
    if len(parts) != 3 or not all(_PART.fullmatch(part) for part in parts):
        return None
    scope, tag, action = parts
    try:
        return ButtonData(scope, tag, Action(action))
    except ValueError:
        return None


def scope_pattern(*scopes: Step | str) -> re.Pattern[str]:
    """Return a regex that matches the callback data of the given scopes."""
    names = "|".join(
        re.escape(scope.value if isinstance(scope, Step) else scope) for scope in scopes
    )
    return re.compile(rf"^(?:{names}){SEPARATOR}")
