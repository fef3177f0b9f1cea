"""Transfer (json-v1 §9), checking who ends up talking to whom by the audio they hear.

Alice's client transfers; Bob (1002) and Carol (1003) are web users sending their own
tones, sipp echoes whatever reaches it. After a transfer both of Alice's calls end
`redirected` and the remaining parties hear each other."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.client import Call, JsonV1Client
from tests.e2e.test_calls import check_tone

pytestmark = pytest.mark.e2e

CAROL = '\n[[users]]\nusername = "carol"\npassword = "carol-secret"\nnumber = "1003"\n'


async def web_call(
    caller: JsonV1Client, callee: JsonV1Client, number: str, freq: float
) -> tuple[Call, Call]:
    out = await caller.dial(number, freq=freq)
    inc = await callee.wait_incoming()
    await inc.accept()
    await inc.answer()
    await out.wait_state("active", timeout=20)
    await inc.wait_state("active", timeout=20)
    return out, inc


async def transfer(call: Call, **what) -> None:
    await call.send("transfer", **what)


async def heard(call: Call, freq: float, what: str) -> None:
    call.active_at = time.monotonic()
    await check_tone(call, freq, seconds=2.0, what=what)


async def login(clients, gateway, name: str, number: str, freq: float) -> JsonV1Client:
    client: JsonV1Client = await clients(gateway, name=name)
    client.incoming_freq = freq
    await client.login(number, name.title())
    return client


async def test_attended_transfer_web_user_to_sip_party(gateway, sipp, clients):
    uas = sipp.uas_echo(gateway.pbx_port)
    alice = await login(clients, gateway, "alice", "1001", 600.0)
    bob = await login(clients, gateway, "bob", "1002", 1500.0)
    to_bob, bobs = await web_call(alice, bob, "1002", 600.0)
    to_sip = await alice.dial("5555", freq=600.0)
    await to_sip.wait_state("active", timeout=20)

    await transfer(to_bob, transferIdentifier=to_sip.identifier)
    for call in (to_bob, to_sip):
        ended = await call.wait_state("terminated", timeout=10)
        assert ended.get("reason") == "redirected", ended
    # Bob now talks to the SIP party: he hears his own tone echoed by sipp.
    assert bobs.state == "active", bobs.statuses
    assert bobs.statuses[-1]["remoteAddress"]["dialString"] == "5555", bobs.statuses[-1]
    await heard(bobs, 1500.0, "bob hears the sipp echo of himself")
    await bobs.hangup()
    await bobs.wait_state("terminated", timeout=10)
    assert await uas.wait(15) == 0, "sipp did not get its BYE from Bob's hang-up"


async def test_attended_transfer_between_two_web_users(request, gateway, clients):
    alice = await login(clients, gateway, "alice", "1001", 600.0)
    bob = await login(clients, gateway, "bob", "1002", 1500.0)
    carol = await login(clients, gateway, "carol", "1003", 2500.0)
    to_bob, bobs = await web_call(alice, bob, "1002", 600.0)
    to_carol, carols = await web_call(alice, carol, "1003", 600.0)
    await transfer(to_carol, transferIdentifier=to_bob.identifier)
    for call in (to_bob, to_carol):
        assert (await call.wait_state("terminated", timeout=10)).get("reason") == "redirected"
    await asyncio.gather(
        heard(bobs, 2500.0, "bob hears carol"), heard(carols, 1500.0, "carol hears bob")
    )
    await bobs.hangup()
    ended = await carols.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "success", ended


async def test_blind_transfer_of_web_user_to_number(gateway, clients):
    alice = await login(clients, gateway, "alice", "1001", 600.0)
    bob = await login(clients, gateway, "bob", "1002", 1500.0)
    to_bob, bobs = await web_call(alice, bob, "1002", 600.0)
    await transfer(to_bob, remoteAddress={"dialString": "9000"})
    assert (await to_bob.wait_state("terminated", timeout=10)).get("reason") == "redirected"
    await bobs._until(
        lambda: (
            bobs.statuses[-1].get("remoteAddress", {}).get("dialString") == "9000"
            and bobs.state == "active"
        ),
        10.0,
        "bob connected to 9000",
    )
    await heard(bobs, 1500.0, "bob hears himself from the echo number")


async def test_failed_transfer_leaves_calls_alone(gateway, clients):
    alice = await login(clients, gateway, "alice", "1001", 600.0)
    echo = await alice.dial("9000", freq=600.0)
    await echo.wait_state("active", timeout=20)
    count = len(echo.statuses)
    # A test number cannot be transferred anywhere: refused, the call stays as it was.
    await transfer(echo, remoteAddress={"dialString": "1002"})
    await echo._until(lambda: len(echo.statuses) > count, 10.0, "a refusal")
    assert echo.statuses[-1].get("state") == "active" and echo.statuses[-1].get("reason")
    await heard(echo, 600.0, "the echo call after the refused transfer")


pytestmark_carol = pytest.mark.parametrize("gateway", [CAROL], indirect=True)
test_attended_transfer_between_two_web_users = pytestmark_carol(
    test_attended_transfer_between_two_web_users
)


async def sip_call(gateway, sipp, clients, scenario: str):
    far = sipp.scenario(
        scenario, f"{scenario}.xml", None, port=gateway.pbx_port, extra=["-rtp_echo"]
    )
    sipp.wait_bound(far, gateway.pbx_port)
    alice = await login(clients, gateway, "alice", "1001", 600.0)
    call = await alice.dial("5555", freq=800.0)
    await call.wait_state("active", timeout=20)
    return far, call


async def test_blind_transfer_of_sip_party_by_refer(gateway, sipp, clients):
    far, call = await sip_call(gateway, sipp, clients, "uas_refer_accept")
    await transfer(call, remoteAddress={"dialString": "7777"})
    ended = await call.wait_state("terminated", timeout=15)
    assert ended.get("reason") == "redirected", ended
    # sipp checked Refer-To named 7777, sent NOTIFY 200 and then got our BYE.
    assert await far.wait(15) == 0, far.logs()[-3000:]


async def test_refused_refer_leaves_the_call_up(gateway, sipp, clients):
    far, call = await sip_call(gateway, sipp, clients, "uas_refer_refuse")
    count = len(call.statuses)
    await transfer(call, remoteAddress={"dialString": "7777"})
    await call._until(lambda: len(call.statuses) > count, 15.0, "the transfer's failure")
    status = call.statuses[-1]
    assert status.get("state") == "active" and status.get("reason"), status
    await heard(call, 800.0, "echo after the refused REFER")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0, far.logs()[-3000:]


async def test_far_end_transfers_the_web_user(gateway, sipp, clients):
    """Incoming REFER: a SIP caller transfers the web user to 9000; the gateway places that
    call for the client, NOTIFYs 100 and 200 (sipp insists), then ends the old dialog."""
    alice = await login(clients, gateway, "alice", "1001", 900.0)
    caller = sipp.scenario(
        "uac_refer",
        "uac_refer.xml",
        gateway.sip_target,
        port=gateway.pbx_port,
        number="1001",
        extra=["-rtp_echo"],
    )
    call = await alice.wait_incoming(timeout=15)
    await call.accept()
    await call.answer()
    await call.wait_state("active", timeout=20)
    await call._until(
        lambda: (
            call.statuses[-1].get("remoteAddress", {}).get("dialString") == "9000"
            and call.state == "active"
        ),
        15.0,
        "the call transferred to 9000",
    )
    await heard(call, 900.0, "alice hears herself from the echo number after the REFER")
    assert await caller.wait(15) == 0, caller.logs()[-3000:]
    assert call.state == "active", call.statuses
