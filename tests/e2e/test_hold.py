"""Hold and retrieve (json-v1 §9) with audio checked before, during and after.

Toward SIP the gateway re-INVITEs with a=sendonly and then a=sendrecv (the sipp scenario
insists on both); between two web clients it stops relaying, and the other client sees
`holding`."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.audio import rms_dbfs
from tests.e2e.client import RATE, Call, JsonV1Client
from tests.e2e.test_calls import check_tone

pytestmark = pytest.mark.e2e

SILENT_DBFS = -50.0


async def hold(call: Call, action: str, state: str) -> None:
    count = len(call.statuses)
    await call.send(action)
    await call._until(
        lambda: any(m.get("state") == state for m in call.statuses[count:]),
        15.0,
        f"status {state!r} after {action}",
    )
    assert not any("reason" in m for m in call.statuses[count:]), call.statuses[count:]


async def assert_silent(call: Call, seconds: float = 1.5, what: str = "") -> None:
    """What arrives over the next `seconds` (after 0.5 s to drain buffers) is silence."""
    await asyncio.sleep(0.5)
    since = time.monotonic()
    await asyncio.sleep(seconds)
    audio = call.received_audio(since=since)
    assert audio.size >= RATE * seconds * 0.5, f"{what}: the track stopped ({audio.size} samples)"
    level = rms_dbfs(audio) if np.any(audio) else -120.0
    assert level < SILENT_DBFS, f"{what}: {level:.1f} dBFS while on hold"


async def check_tone_after(call: Call, freq: float, what: str) -> None:
    call.active_at = time.monotonic()
    await check_tone(call, freq, seconds=2.0, what=what)


async def test_hold_and_retrieve_toward_sip(gateway, sipp, clients):
    far = sipp.scenario(
        "uas_hold", "uas_hold_resume.xml", None, port=gateway.pbx_port, extra=["-rtp_echo"]
    )
    sipp.wait_bound(far, gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 1000.0, seconds=2.0, what="echo before hold")

    await hold(call, "hold", "held")
    await assert_silent(call, what="SIP call held")

    await hold(call, "retrieve", "active")
    await check_tone_after(call, 1000.0, "echo after retrieve")

    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    # sipp checked a=sendonly in the first re-INVITE and a=sendrecv in the second.
    assert await far.wait(15) == 0, far.logs()[-3000:]


async def test_hold_between_web_clients(gateway, clients):
    alice: JsonV1Client = await clients(gateway, name="alice")
    bob: JsonV1Client = await clients(gateway, name="bob")
    await alice.login("1001", "Alice")
    bob.incoming_freq = 1500.0
    await bob.login("1002", "Bob")
    a = await alice.dial("1002", freq=600.0)
    b = await bob.wait_incoming()
    await b.accept()
    await b.answer()
    await a.wait_state("active", timeout=20)
    await b.wait_state("active", timeout=20)
    await check_tone(a, 1500.0, seconds=2.0, what="alice hears bob")

    await hold(a, "hold", "held")
    await b.wait_state("holding", timeout=10)
    await asyncio.gather(
        assert_silent(a, what="alice holding bob"), assert_silent(b, what="bob held by alice")
    )

    # A client cannot retrieve a call the other side holds.
    count = len(b.statuses)
    await b.send("retrieve")
    await b._until(lambda: len(b.statuses) > count, 10.0, "refusal")
    assert b.statuses[-1].get("state") == "holding" and b.statuses[-1].get("reason"), b.statuses

    await hold(a, "retrieve", "active")
    await b._until(lambda: b.state == "active", 10.0, "bob back to active")
    await asyncio.gather(
        check_tone_after(a, 1500.0, "alice hears bob after retrieve"),
        check_tone_after(b, 600.0, "bob hears alice after retrieve"),
    )


@pytest.mark.parametrize(
    ("gateway", "scenario", "what"),
    [
        # re-INVITE a=sendonly, then a=sendrecv
        ("", "uac_hold_resume", "the resume"),
        # c=0.0.0.0 and no direction (RFC 2543), nothing sent for longer than the
        # [media] timeout: `holding`, not a media failure
        ("[media]\ntimeout = 2\n", "uac_hold_rfc2543", "the RFC 2543 resume"),
        # a=sendonly, then a re-INVITE without SDP: the gateway's 200 offers
        # a=sendrecv (the scenario checks) and the ACK's answer resumes
        ("", "uac_hold_late_offer_resume", "the late-offer resume"),
    ],
    indirect=["gateway"],
    ids=["sendonly", "rfc2543", "late-offer"],
)
async def test_far_party_holds_and_resumes_from_sip(gateway, sipp, clients, scenario, what):
    """A SIP caller holds the web user and resumes: `holding`, then `active` again,
    with the audio back after the resume."""
    alice: JsonV1Client = await clients(gateway, name="alice")
    alice.incoming_freq = 1000.0
    await alice.login("1001", "Alice")
    caller = sipp.scenario(
        scenario,
        f"{scenario}.xml",
        gateway.sip_target,
        port=gateway.pbx_port,
        number="1001",
        extra=["-rtp_echo"],
    )
    call = await alice.wait_incoming(timeout=15)
    await call.accept()
    await call.answer()
    await call.wait_state("active", timeout=20)
    await call.wait_state("holding", timeout=15)
    await call._until(
        lambda: call.states[-1] == "active" and "holding" in call.states,
        15.0,
        f"active again after {what}",
    )
    await check_tone_after(call, 1000.0, f"echo after {what}")
    ended = await call.wait_state("terminated", timeout=15)
    assert ended.get("reason") == "success", ended
    assert await caller.wait(15) == 0, caller.logs()[-3000:]


async def test_hold_retried_after_491(gateway, sipp, clients):
    """491 Request Pending to the hold re-INVITE: the gateway retries after the glare
    timer and the call ends up held, then resumes (sipp checks both offers)."""
    far = sipp.scenario(
        "uas_glare", "uas_glare.xml", None, port=gateway.pbx_port, extra=["-rtp_echo"]
    )
    sipp.wait_bound(far, gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await call.send("hold")
    await call.wait_state("held", timeout=15)  # after 491 and a 2.1-4 s wait
    await hold(call, "retrieve", "active")
    await check_tone_after(call, 1000.0, "echo after the glare-delayed hold and retrieve")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0, far.logs()[-3000:]
