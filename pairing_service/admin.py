"""Operator commands for deliveries: ``python -m pairing_service.admin ...``.

- ``dead-letters``: list deliveries that failed for good, newest first, and the
  municipalities whose endpoint is disabled.
- ``redeliver <delivery-id>``: send a failed delivery again, with the same
  ``webhook-id`` and the whole retry schedule, while its encrypted package
  still exists.
- ``enable-endpoint <municipality-code>``: enable an endpoint that was disabled
  after it answered ``410 Gone``.

The commands read the service's own environment (``Settings.from_env``), so
they run next to the service with the same Redis and retry schedule. Output
contains ids, codes and counts only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from journey import keys
from journey.clock import Clock, system_clock
from journey.steps import Event, Step, TransitionRejected
from journey.store import CaseStore
from pairing_service.config import ConfigError, Settings
from pairing_service.consent import DELIVERY_MARGIN_SECONDS
from pairing_service.deliveries import FAILED, DeliveryQueue, DeliveryRecord
from pairing_service.timefmt import iso_utc

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2


class AdminError(Exception):
    """Raised when an operator command cannot be carried out, with the reason."""


class DeliveryAdmin:
    """Dead letters, redelivery and endpoint flags on one Redis.

    Args:
        redis: a ``redis.asyncio`` client created with ``decode_responses=True``.
        schedule: the retry schedule the workers use, to size the lifetime of
            a redelivered case and its package.
        clock: the time source, injectable for tests.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        schedule: tuple[float, ...],
        clock: Clock = system_clock,
    ) -> None:
        self._redis = redis
        self._schedule = schedule
        self._clock = clock
        self._store = CaseStore(redis, clock=clock)
        self._queue = DeliveryQueue(redis, clock=clock)

    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Return up to ``limit`` dead letters, newest first."""
        return await self._queue.dead_letters(limit=limit)

    async def disabled_endpoints(self) -> dict[str, dict[str, str]]:
        """Return the disabled endpoints by municipality code, with the reason."""
        found: dict[str, dict[str, str]] = {}
        async for key in self._redis.scan_iter(
            match=keys.endpoint_disabled("*"), count=1000
        ):
            code = str(key).rsplit("{", 1)[-1].rstrip("}")
            flag = await self._queue.endpoint_disabled(code)
            if flag is not None:
                found[code] = flag
        return found

    async def enable_endpoint(self, municipality_code: str) -> None:
        """Enable a disabled endpoint again.

        Raises:
            AdminError: the endpoint was not disabled.
        """
        if not await self._queue.enable_endpoint(municipality_code):
            raise AdminError(f"the endpoint of {municipality_code} is not disabled")
        logger.info("webhook endpoint enabled municipality=%s", municipality_code)

    async def redeliver(self, delivery_id: str) -> DeliveryRecord:
        """Queue a failed delivery again and return its record.

        Raises:
            AdminError: the delivery is unknown or did not fail, its case or
                package is gone, or its municipality's endpoint is disabled.
        """
        record = await self._queue.record(delivery_id)
        if record is None:
            raise AdminError(f"delivery {delivery_id} not found")
        if record.status != FAILED:
            raise AdminError(
                f"delivery {delivery_id} is {record.status}; only a failed "
                "delivery can be redelivered"
            )
        case = await self._store.find(record.case_id)
        if case is None or case.tombstone or case.step is not Step.DELIVERY_FAILED:
            step = "gone" if case is None else case.step.value
            raise AdminError(
                f"case {record.case_ref} is {step}; it no longer waits for a redelivery"
            )
        if not await self._redis.exists(keys.package(record.case_id)):
            raise AdminError(
                f"the package of case {record.case_ref} has expired; the client "
                "must send it again from the app"
            )
        if await self._queue.endpoint_disabled(record.municipality_code) is not None:
            raise AdminError(
                f"the endpoint of {record.municipality_code} is disabled; run "
                f"enable-endpoint {record.municipality_code} first"
            )

        # The case moves first: of two operators only one wins this transition,
        # and the winner alone reopens the record.
        keep_for = int(sum(self._schedule)) + DELIVERY_MARGIN_SECONDS
        remaining = int(case.expires_at - self._clock())
        try:
            await self._store.apply(
                case.case_id,
                Event.REDELIVER,
                expected_step=Step.DELIVERY_FAILED,
                lifetime=keep_for if remaining < keep_for else None,
            )
        except TransitionRejected:
            raise AdminError(
                f"case {record.case_ref} changed meanwhile; list the dead letters again"
            ) from None
        await self._redis.expire(keys.package(case.case_id), keep_for, gt=True)
        if not await self._queue.reopen(delivery_id):
            raise AdminError(f"delivery {delivery_id} changed meanwhile")
        await self._queue.schedule(delivery_id, self._clock())
        await self._queue.remove_dead_letter(delivery_id)
        logger.info(
            "delivery requeued by operator case=%s delivery=%s",
            record.case_ref,
            delivery_id,
        )
        reopened = await self._queue.record(delivery_id)
        assert reopened is not None
        return reopened


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the operator commands."""
    parser = argparse.ArgumentParser(
        prog="python -m pairing_service.admin",
        description="Operator commands for deliveries to municipalities.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser(
        "dead-letters", help="list failed deliveries and disabled endpoints"
    )
    listing.add_argument(
        "--limit", type=int, default=100, help="maximum entries to list (default 100)"
    )
    redeliver = commands.add_parser("redeliver", help="send a failed delivery again")
    redeliver.add_argument("delivery_id", help="the delivery id (webhook-id), msg_...")
    enable = commands.add_parser(
        "enable-endpoint", help="enable an endpoint disabled after 410 Gone"
    )
    enable.add_argument("municipality_code", help="CBS code, e.g. GM0193")
    return parser


async def run(arguments: argparse.Namespace, admin: DeliveryAdmin) -> int:
    """Run one parsed command against ``admin``; print the result as JSON lines."""
    try:
        if arguments.command == "dead-letters":
            for entry in await admin.dead_letters(limit=arguments.limit):
                entry["failed_at"] = iso_utc(float(entry["failed_at"]))
                print(json.dumps({"dead_letter": entry}))
            for code, flag in (await admin.disabled_endpoints()).items():
                print(json.dumps({"disabled_endpoint": {"code": code, **flag}}))
        elif arguments.command == "redeliver":
            record = await admin.redeliver(arguments.delivery_id)
            print(
                json.dumps(
                    {
                        "redelivering": record.delivery_id,
                        "case_ref": record.case_ref,
                        "municipality_code": record.municipality_code,
                    }
                )
            )
        else:
            await admin.enable_endpoint(arguments.municipality_code)
            print(json.dumps({"enabled_endpoint": arguments.municipality_code}))
    except AdminError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, connect to the service's Redis and run the command."""
    arguments = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level)

    async def session() -> int:
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            admin = DeliveryAdmin(redis, schedule=settings.delivery_retry_schedule)
            return await run(arguments, admin)
        finally:
            await redis.aclose()

    return asyncio.run(session())


if __name__ == "__main__":
    raise SystemExit(main())
