"""The objects every handler of the service uses, built once per application."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from journey.clock import Clock
from journey.events import EventStream
from journey.municipalities import MunicipalityRegistry
from journey.store import CaseStore
from pairing_service.config import Settings


@dataclass(frozen=True, slots=True)
class Services:
    """The service's shared objects: settings, Redis, the case store, events."""

    settings: Settings
    redis: Redis
    store: CaseStore
    events: EventStream
    registry: MunicipalityRegistry
    clock: Clock

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: Redis,
        registry: MunicipalityRegistry,
        clock: Clock,
    ) -> Services:
        """Create the store and the event stream on ``redis``."""
        return cls(
            settings=settings,
            redis=redis,
            store=CaseStore(redis, clock=clock),
            events=EventStream(redis),
            registry=registry,
            clock=clock,
        )


SERVICES = web.AppKey("services", Services)
"""Application key of the ``Services``."""


def services_of(request: web.Request) -> Services:
    """Return the ``Services`` of the application that serves ``request``."""
    return request.config_dict[SERVICES]
