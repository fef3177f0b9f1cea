"""Restore after a page reload (json-v1 §7): the registration and its calls outlive the
WebSocket for the grace period; the SIP leg stays up and audio flows again after restore."""

from __future__ import annotations

import time

import pytest
from aiortc import RTCSessionDescription

from tests.e2e.client import Call, JsonV1Client
from tests.e2e.test_calls import check_tone

pytestmark = pytest.mark.e2e

GRACE = "\n[calls]\nrestore_grace = {}\n"


async def reload_page(gateway, clients, old: JsonV1Client, call_ids: list[str]) -> JsonV1Client:
    """Drop the old connection as a reload does and reconnect with the identifier."""
    identifier = old.registration["identifier"]
    await old.close()
    new: JsonV1Client = await clients(
        gateway, name="reloaded", query=f"identifier={identifier}", connect=False
    )
    for call_id in call_ids:
        # A reloaded page knows its calls only from what the server tells it.
        new.calls[call_id] = Call(new, call_id, "outgoing", 1000.0)
    await new.connect()
    return new


async def answer_new_leg(call: Call) -> None:
    """Answer the server's media/offer for a restored call with a fresh peer connection."""
    sdp = await call._until(lambda: call.offer, 15.0, "media/offer after restore")
    await call.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    call.pc.addTrack(call.tone)
    await call.pc.setLocalDescription(await call.pc.createAnswer())
    await call.send("answer", operation="media", sdp=call.pc.localDescription.sdp)


@pytest.mark.parametrize("gateway", [GRACE.format(20)], indirect=True)
async def test_reload_mid_call_restores_audio_without_bye(gateway, sipp, clients):
    uas = sipp.uas_echo(gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 1000.0, what="echo before the reload")

    again = await reload_page(gateway, clients, alice, [call.identifier])
    status = await again.wait_message(
        lambda m: m.get("operation") == "register" and m.get("action") == "status"
    )
    assert status.get("state") == "active" and status.get("assignment") == "restored", status
    assert status.get("identifier") == alice.registration["identifier"], status
    restored = again.calls[call.identifier]
    await restored.wait_state("active", timeout=10)
    await answer_new_leg(restored)
    # Audio is checked from the restore on (check_tone skips the first second).
    restored.active_at = time.monotonic()
    await check_tone(restored, 1000.0, what="echo after the restore")
    assert uas.returncode is None, "sipp ended the call during the reload (BYE seen)"

    await restored.hangup()
    ended = await restored.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "userTerminated", ended
    assert await uas.wait(15) == 0


@pytest.mark.parametrize("gateway", [GRACE.format(1.5)], indirect=True)
async def test_grace_expiry_ends_the_sip_leg(gateway, sipp, clients):
    uas = sipp.uas_echo(gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=1000.0)
    await call.wait_state("active", timeout=20)
    identifier = alice.registration["identifier"]
    await alice.close()
    # The gateway sends BYE when the grace period runs out: sipp completes and exits 0.
    assert await uas.wait(15) == 0, "sipp saw no BYE after the grace period"

    late: JsonV1Client = await clients(gateway, name="late", query=f"identifier={identifier}")
    status = await late.wait_message(lambda m: m.get("operation") == "register")
    assert status.get("state") == "terminated" and status.get("reason") == "error", status
    await late.wait_closed()


async def test_unknown_identifier_is_refused(gateway, clients):
    c: JsonV1Client = await clients(gateway, name="stranger", query="identifier=not-a-registration")
    status = await c.wait_message(lambda m: m.get("operation") == "register")
    assert status.get("state") == "terminated" and status.get("reason") == "error", status
