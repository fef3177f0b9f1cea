"""Registration toward the PBX ([pbx] register / per_user_registration) against a sipp
registrar that challenges and verifies digest, and OPTIONS qualify of a dead PBX."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.e2e.client import JsonV1Client
from tests.e2e.conftest import SCENARIOS

pytestmark = pytest.mark.e2e

TRUNK = '\n[pbx]\nregister = true\nusername = "gw-trunk"\npassword = "trunk-secret"\n'
PER_USER = "\n[pbx]\nper_user_registration = true\n"
QUALIFY = "\n[pbx]\nqualify_interval = 1\n"


def registrar(sipp, gateway, user: str, password: str):
    xml = (SCENARIOS / "uas_registrar.xml").read_text()
    xml = xml.replace('username="USERNAME"', f'username="{user}"')
    xml = xml.replace('password="PASSWORD"', f'password="{password}"')
    path = sipp.workdir / "uas_registrar.xml"
    path.write_text(xml)
    sp = sipp.start(
        "registrar",
        ["-sf", str(path), "-m", "1", "-timeout", "60s", "-timeout_error"],
        port=gateway.pbx_port,
    )
    sipp.wait_bound(sp, gateway.pbx_port)
    return sp


@pytest.mark.parametrize("gateway", [TRUNK], indirect=True)
async def test_trunk_registration_and_unregistration(gateway, sipp):
    # The gateway's first REGISTER went out before sipp listened; its UDP retransmissions
    # reach the registrar once it is up, then the digest retry registers the trunk.
    reg = registrar(sipp, gateway, "gw-trunk", "trunk-secret")
    messages = sipp.workdir / "sipp-registrar.messages.log"
    for _ in range(100):
        if messages.exists() and "SIP/2.0 200 OK" in messages.read_text():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    gateway.proc.send_signal(signal.SIGTERM)  # shutdown unregisters (Expires: 0)
    gateway.proc.wait(10)
    assert await reg.wait(15) == 0, reg.logs()[-3000:]


@pytest.mark.parametrize("gateway", [PER_USER], indirect=True)
async def test_per_user_registration_follows_login(gateway, sipp, clients):
    reg = registrar(sipp, gateway, "1001", "alice-secret")
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    await asyncio.sleep(1.5)
    await alice.send({"operation": "register", "action": "terminate"})
    await alice.wait_closed()
    assert await reg.wait(15) == 0, reg.logs()[-3000:]


@pytest.mark.parametrize("gateway", [QUALIFY], indirect=True)
async def test_dead_pbx_fails_calls_at_once(gateway, clients):
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    # one OPTIONS went unanswered (5 s): the PBX is down (within the 8 s this once slept)
    deadline = time.monotonic() + 8.0
    while "is DOWN" not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        await asyncio.sleep(0.1)
    call = await alice.dial("5556")
    ended = await call.wait_state("terminated", timeout=5)
    assert ended.get("reason") == "equipment", ended
