"""[media] timeout on calls the gateway joins between two SIP phones (phone to phone
through the built-in registrar): no RTP on either leg for the timeout ends the call
(BYE to both phones, call record reason `media`); ringing and hold do not count.

The phones are the project's own UserAgent registered over TCP (TcpPhone, as in
test_sip_message.py); their RTP is a plain 20 ms PCMU stream (FarMedia, as in
test_dtmf.py) that a test stops by closing it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sip.aio.useragent import OutboundInvite
from sip.events import Answered, Cancelled, Confirmed, SessionEvent, Terminated
from tests.audio import band_energy_ratio, rms_dbfs, sine
from tests.e2e.test_dtmf import FarMedia
from tests.e2e.test_login import call_records
from tests.e2e.test_sip_message import TcpPhone, _answer_sdp, eventually

pytestmark = pytest.mark.e2e

TIMEOUT = 2.0
SHORT_TIMEOUT = f"[media]\ntimeout = {TIMEOUT:g}\n"


def _sdp(port: int, direction: str, version: int) -> bytes:
    """A phone's SDP with another direction and a newer o= version (a re-INVITE's)."""
    return (
        _answer_sdp(port)
        .replace(b"a=sendrecv", f"a={direction}".encode())
        .replace(b"o=- 1 1 ", f"o=- 1 {version} ".encode())
    )


def _terminated(events: list[SessionEvent]) -> list[SessionEvent]:
    return [e for e in events if isinstance(e, Terminated)]


def _assert_heard(media: FarMedia, freq: float, what: str) -> None:
    """What the gateway sent this phone carries the other phone's tone (the rest is
    silence, so the tone dominates the whole recording)."""
    audio = media.audio()
    assert audio.size >= 8000, f"{what}: only {audio.size} samples"
    level = rms_dbfs(audio) if np.any(audio) else -120.0
    assert level > -40.0, f"{what}: {level:.1f} dBFS"
    assert band_energy_ratio(audio, 8000, freq) > 0.8, what


async def _call(
    gateway, caller: TcpPhone, media: FarMedia, events: list[SessionEvent]
) -> OutboundInvite:  # type: ignore[no-untyped-def]
    return caller.ua.invite(
        f"sip:1002@127.0.0.1:{gateway.sip_port};transport=tcp",
        from_user="1001",
        sdp=_answer_sdp(media.port),
        on_event=events.append,
    )


async def _sip_record(gateway) -> dict:  # type: ignore[no-untyped-def]
    records = [r for r in await call_records(gateway, at_least=1) if r["direction"] == "sip"]
    assert len(records) == 1, records
    return records[0]


@pytest.mark.parametrize("gateway", [SHORT_TIMEOUT], indirect=True)
async def test_phone_to_phone_call_ends_when_one_phone_stops_sending(gateway):  # type: ignore[no-untyped-def]
    """1001 calls 1002, which has two phones: one rings past the timeout and answers, the
    other gets CANCEL (neither the ringing nor the cancelled branch trips the timeout).
    Audio crosses both ways; the call outlives the timeout while RTP flows. Then the
    answering phone's RTP stops: both phones get BYE about TIMEOUT later, and the call
    record says `media`."""
    caller, callee, other = TcpPhone(), TcpPhone(), TcpPhone()
    callee.auto_answer = other.auto_answer = False
    a_media, b_media = await FarMedia().start(), await FarMedia().start()
    loop = asyncio.get_running_loop()
    try:
        await caller.register(gateway, "1001", "alice-secret")
        await callee.register(gateway, "1002", "bob-secret")
        await other.register(gateway, "1002", "bob-secret")
        events: list[SessionEvent] = []
        await _call(gateway, caller, a_media, events)
        invite = await callee.wait_invite()
        await other.wait_invite()

        # Ringing longer than the timeout, with no RTP from anybody: not a media failure.
        await asyncio.sleep(TIMEOUT + 1.5)
        assert not _terminated(events) and not callee.events and not other.events
        invite.answer(_answer_sdp(b_media.port))
        await callee.wait_for(Confirmed)
        assert await other.wait_for(Cancelled) == Cancelled()
        await eventually(lambda: any(isinstance(e, Answered) for e in events))

        a_media.play(sine(1000.0, 2.0, rate=8000, amplitude=0.3))
        b_media.play(sine(1500.0, 2.0, rate=8000, amplitude=0.3))
        await a_media.drained()
        await b_media.drained()
        await asyncio.sleep(1.0)  # the answer is now TIMEOUT + 1 s old
        _assert_heard(b_media, 1000.0, "the callee hears the caller")
        _assert_heard(a_media, 1500.0, "the caller hears the callee")
        assert not _terminated(events) and not _terminated(callee.events)

        await b_media.close()  # the callee's media dies; its dialog stays
        stopped = loop.time()
        assert await callee.wait_for(Terminated, timeout=TIMEOUT + 5) == Terminated("bye")
        await eventually(lambda: _terminated(events))
        assert _terminated(events) == [Terminated("bye")], events
        elapsed = loop.time() - stopped
        assert TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 3.0, elapsed

        record = await _sip_record(gateway)
        assert (record["remote_number"], record["local_number"]) == ("1001", "1002"), record
        assert record["answer_time"] is not None and record["end_time"] is not None, record
        assert (record["reason"], record["sip_code"]) == ("media", 200), record
        assert "no RTP from Call-ID" in gateway.log()
    finally:
        await a_media.close()
        await b_media.close()
        for phone in (caller, callee, other):
            await phone.close()


@pytest.mark.parametrize("gateway", [SHORT_TIMEOUT], indirect=True)
async def test_phone_to_phone_call_on_hold_is_not_ended_for_silence(gateway):  # type: ignore[no-untyped-def]
    """The caller holds (re-INVITE a=sendonly) and both phones stop sending: the call
    stays up for well over the timeout. Resumed (a=sendrecv) with still no RTP, the
    timeout counts again from the resume and ends the call (`media`)."""
    caller, callee = TcpPhone(), TcpPhone()
    a_media, b_media = await FarMedia().start(), await FarMedia().start()
    callee.rtp_port = b_media.port
    loop = asyncio.get_running_loop()
    try:
        await caller.register(gateway, "1001", "alice-secret")
        await callee.register(gateway, "1002", "bob-secret")
        events: list[SessionEvent] = []
        outbound = await _call(gateway, caller, a_media, events)
        await callee.wait_for(Confirmed)
        await eventually(lambda: any(isinstance(e, Answered) for e in events))
        await asyncio.sleep(1.0)
        assert a_media.received and b_media.received  # RTP flows both ways

        results: list[tuple[int, bytes | None]] = []
        outbound.reinvite(_sdp(a_media.port, "sendonly", 2), lambda c, s: results.append((c, s)))
        await eventually(lambda: results)
        assert results and results[0][0] == 200 and b"a=recvonly" in (results[0][1] or b"")
        await a_media.close()
        await b_media.close()
        await asyncio.sleep(TIMEOUT * 2.5)
        assert not _terminated(events) and not _terminated(callee.events)

        outbound.reinvite(_sdp(a_media.port, "sendrecv", 3), lambda c, s: results.append((c, s)))
        await eventually(lambda: len(results) == 2)
        resumed = loop.time()
        assert results[1][0] == 200 and b"a=sendrecv" in (results[1][1] or b""), results
        assert await callee.wait_for(Terminated, timeout=TIMEOUT + 5) == Terminated("bye")
        elapsed = loop.time() - resumed
        assert TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 3.0, elapsed
        await eventually(lambda: _terminated(events))
        assert _terminated(events) == [Terminated("bye")], events
        record = await _sip_record(gateway)
        assert record["reason"] == "media", record
    finally:
        await a_media.close()
        await b_media.close()
        await caller.close()
        await callee.close()
