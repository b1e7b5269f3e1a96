"""The government sources the Ockto app fetches from."""

from __future__ import annotations

SOURCES: tuple[str, ...] = (
    "belastingdienst",
    "uwv",
    "mijnoverheid",
    "mijnpensioenoverzicht",
)
"""Source ids in the order the app offers them; the bot names them from the catalog."""

PERSONS: tuple[str, ...] = ("client", "partner")
