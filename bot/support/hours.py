"""Opening hours of the helpdesk, such as ``mon-fri 09:00-17:00``, in local time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
"""The helpdesk works in the Netherlands, so its hours are Amsterdam time."""

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names in the configuration, in ``datetime.weekday()`` order."""

_RULE = re.compile(r"([a-z,\-]+)\s+(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")


class OpeningHoursError(ValueError):
    """Raised when opening hours are not of the form ``mon-fri 09:00-17:00``."""


@dataclass(frozen=True, slots=True)
class OpeningRule:
    """Days of the week (0 is Monday) with one opening time and closing time.

    ``start`` and ``end`` are minutes after local midnight.
    """

    days: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class OpeningHours:
    """The weekly opening hours of the helpdesk."""

    rules: tuple[OpeningRule, ...]
    zone: ZoneInfo = AMSTERDAM

    @classmethod
    def parse(cls, text: str, zone: ZoneInfo = AMSTERDAM) -> OpeningHours:
        """Parse rules such as ``mon-fri 09:00-17:00; sat 10:00-12:00``.

        Days are ``mon`` to ``sun``, as a range (``mon-fri``) or a comma list
        (``mon,wed``). Rules are separated by ``;``.

        Raises:
            OpeningHoursError: a rule, day or time is invalid.
        """
        rules = []
        for part in text.lower().split(";"):
            part = part.strip()
            if not part:
                continue
            match = _RULE.fullmatch(part)
            if match is None:
                raise OpeningHoursError(
                    f"opening hours must look like 'mon-fri 09:00-17:00', got {part!r}"
                )
            days_text, start_hour, start_minute, end_hour, end_minute = match.groups()
            start = _minutes(int(start_hour), int(start_minute), part)
            end = _minutes(int(end_hour), int(end_minute), part)
            if start >= end:
                raise OpeningHoursError(
                    f"opening time must be before closing time in {part!r}"
                )
            rules.append(OpeningRule(_days(days_text), start, end))
        if not rules:
            raise OpeningHoursError("opening hours are empty")
        return cls(tuple(rules), zone)

    def is_open(self, moment: float) -> bool:
        """Tell whether the helpdesk is open at the Unix time ``moment``."""
        local = datetime.fromtimestamp(moment, self.zone)
        minute = local.hour * 60 + local.minute
        return any(
            local.weekday() in rule.days and rule.start <= minute < rule.end
            for rule in self.rules
        )


def format_minutes(minutes: int) -> str:
    """Format minutes after midnight as ``HH:MM``."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(hour: int, minute: int, rule: str) -> int:
    if minute > 59 or hour > 24 or (hour == 24 and minute != 0):
        raise OpeningHoursError(f"invalid time in opening hours {rule!r}")
    return hour * 60 + minute


def _days(text: str) -> tuple[int, ...]:
    days: list[int] = []
    for item in text.split(","):
        first, _, last = item.partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise OpeningHoursError(
                f"unknown day in {text!r}; use {', '.join(WEEKDAYS)}"
            )
        start = WEEKDAYS.index(first)
        end = WEEKDAYS.index(last) if last else start
        if end < start:
            raise OpeningHoursError(f"day range {item!r} runs backwards")
        days.extend(range(start, end + 1))
    return tuple(sorted(set(days)))
