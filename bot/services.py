"""The objects every handler needs, kept in ``application.bot_data`` under one key.

Handlers hold no state of their own: the case is read from Redis on every
update through the store found here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telegram.ext import Application, CallbackContext

from bot.config import BotSettings
from bot.service_client import ServiceClient
from journey.events import EventStream
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.store import CaseStore

SERVICES_KEY = "services"


@dataclass(slots=True)
class BotServices:
    """The store, the event stream, the service client, the registry and settings."""

    settings: BotSettings
    store: CaseStore
    events: EventStream
    service: ServiceClient
    registry: MunicipalityRegistry

    def municipality_name(self, code: str) -> str:
        """Return the municipality's name, or the CBS code if it is not registered."""
        municipality: Municipality | None = self.registry.get(code)
        return municipality.name if municipality is not None else code


def get_services(context: CallbackContext[Any, Any, Any, Any]) -> BotServices:
    """Return the services of the application that runs ``context``."""
    services: BotServices = context.bot_data[SERVICES_KEY]
    return services


def services_of(application: Application[Any, Any, Any, Any, Any, Any]) -> BotServices:
    """Return the services stored in ``application``."""
    services: BotServices = application.bot_data[SERVICES_KEY]
    return services
