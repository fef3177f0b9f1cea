"""The built-in test numbers: a client hears its own echo, or a 1 kHz tone, with no PBX."""

from __future__ import annotations

import pytest

from tests.e2e.client import JsonV1Client
from tests.e2e.test_calls import check_tone

pytestmark = pytest.mark.e2e


async def test_echo_number_returns_the_clients_tone(gateway, clients):
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("9000", freq=700.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 700.0, what="echo number")
    await call.hangup()
    ended = await call.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "userTerminated", ended


async def test_tone_number_plays_1khz(gateway, clients):
    bob: JsonV1Client = await clients(gateway, name="bob")
    await bob.login("1002", "Bob")
    # The client sends 300 Hz: hearing 1 kHz proves it is the tone, not an echo.
    call = await bob.dial("9001", freq=300.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 1000.0, what="tone number")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
