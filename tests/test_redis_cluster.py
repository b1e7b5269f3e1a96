"""The whole journey on a three-node Redis Cluster that the test starts itself.

Redis Cluster rejects a Lua script or a MULTI whose keys span hash slots
(CROSSSLOT), so a journey that completes here shows that every multi-key
operation of the bot and the service stays within one slot.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis, RedisCluster

from bot.i18n import translate
from journey import keys
from journey.package import KeyPair
from journey.redis_client import connect, is_cluster_url
from journey.steps import Step
from journey.store import CaseStore
from sandbox.app_simulator import synthetic_package
from sandbox.redis_cluster import RedisCluster as ClusterProcesses
from sandbox.redis_cluster import start_redis_cluster
from sandbox.scripted_client import ScriptedClient
from sandbox.stack import SandboxStack, running_stack
from sandbox.telegram_emulator import EmulatorClient, RateLimits
from tests.test_bot_conversation import FAST_SEND_LIMITS
from tests.test_pairing_service import make_registry, running_service

USER_ID = 727272


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterProcesses]:
    processes = start_redis_cluster()
    yield processes
    processes.stop()


@pytest.fixture
async def cluster_stack(cluster: ClusterProcesses) -> AsyncIterator[SandboxStack]:
    async with running_stack(
        redis_url=cluster.url,
        rate_limits=RateLimits.disabled(),
        send_limits=FAST_SEND_LIMITS,
    ) as running:
        yield running


async def _node_keys(cluster: ClusterProcesses) -> dict[str, int]:
    """Return every key of every node with its TTL, read node by node."""
    found: dict[str, int] = {}
    for node in cluster.nodes:
        client = Redis.from_url(node.url, decode_responses=True)
        try:
            async for key in client.scan_iter(count=1000):
                found[key] = await client.ttl(key)
        finally:
            await client.aclose()
    return found


def test_connect_chooses_client_by_url() -> None:
    assert isinstance(connect("redis+cluster://127.0.0.1:7000"), RedisCluster)
    assert isinstance(connect("redis://127.0.0.1:7000/0", environ={}), Redis)
    assert is_cluster_url("redis://127.0.0.1:7000", {"REDIS_CLUSTER": "1"})
    assert not is_cluster_url("unix:///run/redis.sock", {"REDIS_CLUSTER": "1"})
    with pytest.raises(ValueError, match="not supported"):
        connect("http://127.0.0.1:7000")


async def test_cluster_has_three_primaries(cluster: ClusterProcesses) -> None:
    client = connect(cluster.url)
    try:
        info = await client.cluster_info()  # type: ignore[attr-defined]
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_known_nodes"]) == 3
        assert int(info["cluster_slots_assigned"]) == 16384
    finally:
        await client.aclose()


async def test_qr_page_status_on_cluster(
    cluster: ClusterProcesses, key_pair: KeyPair
) -> None:
    client = connect(cluster.url)
    try:
        async with running_service(client, make_registry(key_pair)) as service:
            case_id = await service.case_in_app_step()
            pairing = await service.create_pairing(case_id)
            status_url = f"/koppel/{pairing['page_id']}/status"
            before = await service.client.get(status_url)
            before_body = await before.json()
            await service.simulator().claim(pairing["app_link"])
            after = await service.client.get(status_url)
            after_body = await after.json()
    finally:
        await client.aclose()
    assert before.status == 200, before_body
    assert before_body["status"] == "waiting"
    assert after.status == 200, after_body
    assert after_body["status"] == "paired"


@pytest.mark.parametrize("partner", [False, True], ids=["alone", "with_partner"])
async def test_journey_on_cluster_delivers_package(
    cluster: ClusterProcesses, cluster_stack: SandboxStack, partner: bool
) -> None:
    stack = cluster_stack
    invitation = await stack.invite()
    package = synthetic_package(f"cluster-{secrets.token_hex(6)}")
    assert stack.emulator_url is not None
    async with EmulatorClient(stack.emulator_url) as emulator:
        client = ScriptedClient(stack, emulator, USER_ID + int(partner))
        transcript = await client.play(invitation, partner=partner, package=package)

    receiver = stack.receiver(invitation.municipality_code)
    assert len(receiver.deliveries) == 1
    assert receiver.rejected == []
    assert receiver.deliveries[0].plaintext == package
    assert transcript.delivered_text == translate(
        "delivered.body", municipality="Zwolle"
    )
    tombstone = await CaseStore(stack.redis).get(invitation.case_id)
    assert tombstone.step is Step.DELIVERED
    assert tombstone.tombstone

    stored = await _node_keys(cluster)
    assert [key for key, ttl in stored.items() if ttl == -1] == []
    # The tombstone and the reminder marks (no personal data) are all that is
    # left of the case.
    case_keys = {key for key in stored if invitation.case_id in key}
    assert keys.case(invitation.case_id) in case_keys
    assert case_keys <= {
        keys.case(invitation.case_id),
        keys.reminder_state(invitation.case_id),
    }
