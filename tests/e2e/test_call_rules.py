"""Forking, no answer, dial rules and limits (json-v1 §6, §9; DESIGN §9)."""

from __future__ import annotations

import pytest

from tests.e2e.client import JsonV1Client
from tests.e2e.test_calls import check_tone

pytestmark = pytest.mark.e2e

RULES = """
[calls]
no_answer_timeout = 3
dial_deny = ["00.*", "0900.*"]
max_calls_per_client = 2
max_clients_per_number = 2
"""


async def login(clients, gateway, name: str, number: str, freq: float = 1000.0):
    client: JsonV1Client = await clients(gateway, name=name)
    client.incoming_freq = freq
    await client.login(number, name)
    return client


@pytest.mark.parametrize("gateway", [RULES], indirect=True)
async def test_forking_first_answer_wins(gateway, clients):
    alice = await login(clients, gateway, "alice", "1001", 600.0)
    bob_desk = await login(clients, gateway, "bob-desk", "1002", 1500.0)
    bob_phone = await login(clients, gateway, "bob-phone", "1002", 1700.0)
    out = await alice.dial("1002", freq=600.0)
    desk, phone = await bob_desk.wait_incoming(), await bob_phone.wait_incoming()
    await desk.accept()
    await phone.accept()
    await phone.answer()
    ended = await desk.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "notSelected", ended
    await out.wait_state("active", timeout=20)
    await check_tone(out, 1700.0, seconds=2.0, what="alice hears the phone that answered")


@pytest.mark.parametrize("gateway", [RULES], indirect=True)
async def test_no_answer_ends_with_not_responding(gateway, clients):
    alice = await login(clients, gateway, "alice", "1001")
    bob = await login(clients, gateway, "bob", "1002")
    out = await alice.dial("1002")
    inc = await bob.wait_incoming()
    await inc.accept()
    for call in (out, inc):
        ended = await call.wait_state("terminated", timeout=15)
        assert ended.get("reason") == "notResponding", ended


@pytest.mark.parametrize("gateway", [RULES], indirect=True)
async def test_dial_rules_and_limits(gateway, clients):
    alice = await login(clients, gateway, "alice", "1001")
    for i, number in enumerate(("0049301234", "09001234567")):
        await alice.send(
            {
                "operation": "signaling",
                "action": "start",
                "identifier": f"d{i}",
                "remoteAddress": {"dialString": number},
            }
        )
        ended = await alice.wait_message(lambda m, i=i: m.get("identifier") == f"d{i}")
        assert ended.get("state") == "terminated", (number, ended)
        assert ended.get("reason") == "permission", (number, ended)
    # Two calls at once are allowed, a third is refused.
    first = await alice.dial("9000")
    second = await alice.dial("9001")
    await first.wait_state("active", timeout=20)
    await second.wait_state("active", timeout=20)
    await alice.send(
        {
            "operation": "signaling",
            "action": "start",
            "identifier": "third",
            "remoteAddress": {"dialString": "9000"},
        }
    )
    reply = await alice.wait_message(lambda m: m.get("identifier") == "third")
    assert reply.get("state") == "terminated" and reply.get("reason") == "congestion", reply
    # Two clients per number; the third login is refused.
    await login(clients, gateway, "alice-2", "1001")
    third: JsonV1Client = await clients(gateway, name="alice-3")
    status = await third.register("1001")
    assert status.get("state") == "terminated" and status.get("reason") == "congestion", status
