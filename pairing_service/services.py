"""The objects every handler of the service uses, built once per application."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

from journey.clock import Clock
from journey.events import EventStream
from journey.municipalities import MunicipalityRegistry
from journey.store import CaseStore
from pairing_service.config import Settings
from pairing_service.script_pipeline import ScriptPipeline
from pairing_service.typed_codes import derive_key


@dataclass(frozen=True, slots=True)
class Services:
    """The service's shared objects: settings, Redis, the case store, events."""

    settings: Settings
    redis: Redis
    store: CaseStore
    events: EventStream
    registry: MunicipalityRegistry
    clock: Clock
    typed_code_key: bytes = b""
    """HMAC key of typed codes (see ``pairing_service.typed_codes``)."""
    single_server: bool = True
    """Whether ``redis`` is one server, where a Lua script may touch keys of
    several hash slots; False for Redis Cluster."""
    _scripts: dict[str, AsyncScript] = field(default_factory=dict, repr=False)
    _pipeline: ScriptPipeline | None = field(default=None, repr=False)

    async def run_script(
        self, source: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run the Lua script ``source`` and return its reply.

        On one Redis server the call shares a pipeline with the script calls
        of other requests in the same turn of the event loop (see
        ``pairing_service.script_pipeline``). On Redis Cluster it goes alone.
        """
        script = self.script(source)
        if self._pipeline is None:
            return await script(keys=keys, args=args)
        return await self._pipeline.call(script, keys, args)

    def script(self, source: str) -> AsyncScript:
        """Return the Lua script ``source`` registered on this Redis client.

        Registering once keeps the SHA1 of the source from being computed on
        every request; the script still runs with EVALSHA.
        """
        script = self._scripts.get(source)
        if script is None:
            script = self.redis.register_script(source)
            self._scripts[source] = script
        return script

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: Redis,
        registry: MunicipalityRegistry,
        clock: Clock,
    ) -> Services:
        """Create the store and the event stream on ``redis``."""
        single_server = not isinstance(redis, RedisCluster)
        return cls(
            settings=settings,
            redis=redis,
            store=CaseStore(redis, clock=clock),
            events=EventStream(redis),
            registry=registry,
            clock=clock,
            typed_code_key=derive_key(
                settings.service_token, settings.typed_code_secret
            ),
            single_server=single_server,
            _pipeline=ScriptPipeline(redis) if single_server else None,
        )


SERVICES = web.AppKey("services", Services)
"""Application key of the ``Services``."""


def services_of(request: web.Request) -> Services:
    """Return the ``Services`` of the application that serves ``request``."""
    return request.config_dict[SERVICES]
