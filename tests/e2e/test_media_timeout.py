"""[media] timeout on web clients' calls, end to end: a SIP far end that sends no RTP
after the answer gets the gateway's BYE about the timeout later and the web client's
call ends with reason `media` (json-v1 §6); a ring longer than the timeout does not
count, and a far end that does send RTP keeps the call up.

The far ends are sipp scenarios (tests/e2e/scenarios/uas_media_timeout*.xml,
uac_media_timeout.xml) that send no RTP unless run with -rtp_echo; the web side is the
project's aiortc json-v1 client. The timeout is 2 s and every ring lasts ~3.5 s, so a
timeout that counted from the SDP negotiation instead of the answer would fire during
the ring (while it is ignored) and then never again.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.client import Call
from tests.e2e.sipp_calls import call_from_sipp
from tests.e2e.test_login import call_records
from tests.e2e.test_sip_media import (
    FAR_NUMBER,
    assert_tone,
    expect_exit,
    logged_in,
    status_time,
    uas,
    wait_active,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 2.0  # [media] timeout, seconds
RING = 3.5  # how long the far end / the web client rings before answering
SHORT_TIMEOUT = f"[media]\ntimeout = {TIMEOUT:g}\n"
# When the client may see `terminated` after `active`: the timeout, give or take the
# 20 ms check tick, signalling and the client's own scheduling. Not before EARLIEST (a
# ring that counted would end the call at once), not after LATEST.
EARLIEST, LATEST = TIMEOUT - 0.5, TIMEOUT + 4.0


async def record_of(gateway, call: Call) -> dict:  # type: ignore[no-untyped-def]
    records = await call_records(gateway, at_least=1)
    mine = [r for r in records if r["call_id"] == call.identifier]
    assert len(mine) == 1, records
    return mine[0]


def assert_rang(call: Call) -> None:
    """The call went through `ringing` for longer than the timeout before `active`."""
    states = call.states
    assert "ringing" in states and states.index("ringing") < states.index("active"), states
    rang = status_time(call, "active") - status_time(call, "ringing")
    assert rang >= TIMEOUT + 1.0, f"rang only {rang:.2f} s (wanted ~{RING} s > {TIMEOUT} s)"


async def assert_ends_for_media(call: Call) -> float:
    """The active call ends with reason `media` EARLIEST..LATEST s after `active`;
    returns that delay."""
    active_at = status_time(call, "active")
    try:
        ended = await call.wait_state("terminated", timeout=LATEST + 4.0)
    except TimeoutError:
        pytest.fail(
            f"call still up {time.monotonic() - active_at:.1f} s after `active` with no RTP "
            f"from the far end ([media] timeout = {TIMEOUT:g}); statuses {call.states}"
        )
    after = status_time(call, "terminated") - active_at
    assert ended.get("reason") == "media", f"{ended} ({after:.2f} s after active)"
    assert EARLIEST <= after <= LATEST, (
        f"ended {after:.2f} s after `active`, expected {EARLIEST:g}..{LATEST:g} s "
        f"(timeout {TIMEOUT:g} s counted from the answer)"
    )
    print(f"[media-timeout] ended {after:.2f} s after active")
    return after


async def assert_media_record(gateway, call: Call) -> None:  # type: ignore[no-untyped-def]
    record = await record_of(gateway, call)
    assert record["reason"] == "media", record
    assert record["answer_time"] is not None and record["end_time"] is not None, record
    assert record["sip_code"] == 200, record
    assert "no RTP for" in gateway.log(), "no media timeout line in the gateway log"


# --------------------------------------------------------------------------- outgoing


@pytest.mark.parametrize("gateway", [SHORT_TIMEOUT], indirect=True, ids=["timeout2"])
@pytest.mark.parametrize(
    "xml",
    ["uas_media_timeout.xml", "uas_media_timeout_early.xml"],
    ids=["180-no-sdp", "183-early-sdp"],
)
async def test_outgoing_call_ends_when_far_end_sends_no_rtp(gateway, sipp, clients, xml):
    """The web client calls a far end that rings ~3.5 s (180 without SDP, or 183 with
    SDP, which negotiates the SIP leg's media before the answer), answers, and never
    sends RTP: the call is active, then ends `media` about 2 s after the answer (not at
    once: the ring does not count), and the far end gets the BYE."""
    far = uas(sipp, gateway, xml)
    alice = await logged_in(clients, gateway)

    call = await alice.dial(FAR_NUMBER, freq=1000.0)
    await wait_active(call, timeout=RING + 15)
    assert_rang(call)
    await assert_ends_for_media(call)
    await expect_exit(far)  # 0: it got the gateway's BYE and answered it
    assert "BYE sip:" in far.logs(), "sipp saw no BYE"
    await assert_media_record(gateway, call)


# --------------------------------------------------------------------------- incoming


@pytest.mark.parametrize("gateway", [SHORT_TIMEOUT], indirect=True, ids=["timeout2"])
async def test_incoming_call_ends_when_caller_sends_no_rtp(gateway, sipp, clients):
    """A SIP caller (whose SDP arrives with the INVITE) rings the web client, which
    answers after ~3.5 s; the caller never sends RTP: the call ends `media` about 2 s
    after the answer, and the caller gets the BYE."""
    alice = await logged_in(clients, gateway)
    caller, call = await call_from_sipp(
        sipp, gateway, alice, "uac_media_timeout.xml", ringing=True, answer=False
    )
    await asyncio.sleep(RING)
    assert "terminated" not in call.states, call.statuses  # ringing is not a media failure
    await call.answer()
    await wait_active(call)
    assert_rang(call)
    await assert_ends_for_media(call)
    await expect_exit(caller)  # 0: it got 180, 200 and the gateway's BYE
    assert "BYE sip:" in caller.logs(), "sipp saw no BYE"
    await assert_media_record(gateway, call)


# --------------------------------------------------------------------------- negative


@pytest.mark.parametrize("gateway", [SHORT_TIMEOUT], indirect=True, ids=["timeout2"])
async def test_call_with_rtp_outlives_the_timeout(gateway, sipp, clients):
    """The same far end as the first test, but echoing RTP (-rtp_echo): the client hears
    its tone back, the call is still active 4.5 s after the answer (more than twice the
    timeout), and ends only when the client hangs up (`userTerminated`, BYE to sipp)."""
    far = uas(sipp, gateway, "uas_media_timeout.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)

    call = await alice.dial(FAR_NUMBER, freq=1000.0)
    await wait_active(call, timeout=RING + 15)
    assert_rang(call)
    active_at = status_time(call, "active")
    await asyncio.sleep(max(0.0, active_at + 2 * TIMEOUT + 0.5 - time.monotonic()))
    up = time.monotonic() - active_at
    assert up >= 2 * TIMEOUT + 0.5, up
    assert call.states[-1] == "active" and "terminated" not in call.states, (
        f"{up:.1f} s after `active` with RTP flowing: {call.statuses}"
    )
    assert far.returncode is None, "sipp ended while the call should be up"
    # RTP really came from the far end all along: the echo of the client's tone
    assert_tone(call.received_audio(since=active_at, skip=1.0), 1000.0, "echo while up")

    await call.hangup()
    ended = await call.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "userTerminated", ended
    await expect_exit(far)
    record = await record_of(gateway, call)
    assert record["reason"] == "userTerminated", record
    assert "no RTP for" not in gateway.log()
