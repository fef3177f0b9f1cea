"""RFC 4733 DTMF on the WebRTC leg (telephone-event grafted onto aiortc)."""

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc import RTCRtpCodecParameters

from rtc.dtmf import DIGITS, MAX_DURATION, TelephoneEvent
from rtc.rtp import RtpPacket
from rtc.webrtcdtmf import TELEPHONE_EVENT_CODECS, TransceiverDtmf
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, dominant_frequency

from .conftest import read_for, wait_for, write_paced
from .test_webrtcleg import connect


def g711_only(offer: str) -> str:
    """The offer of a browser restricted to PCMU/PCMA (telephone-event/8000 kept)."""
    lines = []
    for line in offer.splitlines():
        if line.startswith("m=audio"):
            line = " ".join(line.split()[:3] + ["0", "8", "126"])
        elif line.startswith(("a=rtpmap:96", "a=fmtp:96", "a=rtcp-fb:96")):
            continue
        elif line.startswith(("a=rtpmap:110", "a=fmtp:110")):
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("codec", ["opus", "pcmu"])
async def test_every_digit_once_both_ways_and_audio_after(codec: str) -> None:
    at_a: list[str] = []
    at_b: list[str] = []
    a, b = WebRtcLeg(on_dtmf=at_a.append), WebRtcLeg()
    b.on_dtmf = at_b.append
    try:
        with pytest.raises(RuntimeError):
            a.send_dtmf("1")  # nothing negotiated yet
        if codec == "opus":
            await connect(a, b)
            assert a.codec == "audio/opus"
        else:
            answer = await b.accept_offer(g711_only(await a.create_offer()))
            assert "telephone-event/8000" in answer
            await a.accept_answer(answer)
            await wait_for(lambda: a.connection_state == b.connection_state == "connected", 10)
            assert a.codec == "audio/PCMU"
        assert a.dtmf_negotiated and b.dtmf_negotiated
        with pytest.raises(ValueError):
            a.send_dtmf("12x")

        writer = asyncio.ensure_future(write_paced(a, SineSource(1000, 48000, 0.3), 4.0))
        a.send_dtmf(DIGITS, duration_ms=60)
        b.send_dtmf("#*1")
        await wait_for(lambda: len(at_b) >= 16 and len(at_a) >= 3, 10)
        await asyncio.sleep(0.3)
        assert "".join(at_b) == DIGITS
        assert "".join(at_a) == "#*1"
        assert b.last_received is not None
        # the events took the audio's sequence numbers: none of them is a loss
        # (before, all 16 digits' packets were, in stats and our receiver reports)
        stats = await b.stats()
        assert stats.packets_received > 100 and stats.packets_lost == 0
        # the decoder never saw the events: audio still flows
        received = await read_for(b, 0.6)
        await writer
        assert dominant_frequency(received[-9600:], 48000) == pytest.approx(1000, abs=5)
    finally:
        await a.close()
        await b.close()


async def test_offer_without_telephone_event() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        offer = await a.create_offer()
        offer = "\r\n".join(
            line.replace(" 110 126", "")
            for line in offer.splitlines()
            if not line.startswith(("a=rtpmap:110", "a=rtpmap:126", "a=fmtp:110", "a=fmtp:126"))
        )
        answer = await b.accept_offer(offer + "\r\n")
        assert "telephone-event" not in answer
        await a.accept_answer(answer)
        assert not a.dtmf_negotiated and not b.dtmf_negotiated
        with pytest.raises(RuntimeError):
            b.send_dtmf("1")
    finally:
        await a.close()
        await b.close()


OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


def stand_in_dtmf() -> TransceiverDtmf:
    """A TransceiverDtmf on a stand-in for an aiortc transceiver that negotiated Opus."""
    transceiver: Any = SimpleNamespace(
        _codecs=[OPUS, *TELEPHONE_EVENT_CODECS],
        receiver=SimpleNamespace(_handle_rtp_packet=None, _enabled=True),
        sender=SimpleNamespace(transport=SimpleNamespace(_send_rtp=None), setTransport=None),
    )
    return TransceiverDtmf(transceiver, lambda: None)


def test_long_digit_to_the_browser_in_segments() -> None:
    """
    RFC 4733 2.5.1.3: 2 s at telephone-event/48000 is past the 16-bit duration;
    it goes in two segments, 0xFFFF apart, that together last the 2 s, and
    the receiving side reports one digit.
    """
    dtmf = stand_in_dtmf()
    dtmf.send("5", 2000)
    events: list[tuple[int, bool, TelephoneEvent]] = []
    sequence, timestamp = 1, 100_000
    while dtmf.sending:
        audio = RtpPacket(111, sequence, timestamp, 1, payload=b"\x00" * 40)
        packet = RtpPacket.parse(dtmf.replace(bytes(audio)))
        assert packet.payload_type == 110
        assert packet.sequence_number == sequence  # in place of the audio
        events.append((packet.timestamp, packet.marker, TelephoneEvent.parse(packet.payload)))
        sequence, timestamp = sequence + 1, timestamp + 960
    assert [marker for _, marker, _ in events] == [True] + [False] * (len(events) - 1)
    first = [event for ts, _, event in events if ts == 100_000]
    second = [event for ts, _, event in events if ts == 100_000 + MAX_DURATION]
    assert len(first) + len(second) == len(events)
    assert first[-1] == TelephoneEvent(5, False, 10, MAX_DURATION)
    assert not any(event.end for event in first)
    assert [event.duration for event in second[:2]] == [1665, 2625]
    assert second[-3:] == [TelephoneEvent(5, True, 10, 96000 - MAX_DURATION)] * 3
    # the packets it replaced: the 2 s of audio (the 0xFFFF report takes one
    # of them), then the 2 retransmitted ends
    assert len(events) == 100 + 2

    receiver = stand_in_dtmf()
    digits: list[str] = []
    receiver.on_dtmf = digits.append
    for ts, _, event in events:
        receiver.receive_event(7, ts, bytes(event))
    assert digits == ["5"]


def test_long_press_from_the_browser_is_one_digit() -> None:
    """
    libwebrtc (rtp_sender_audio.cc) sends a long press in segments: past
    0xFFFF a report of 0xFFFF, then a new timestamp (RFC 4733 2.5.2.3).
    """
    dtmf = stand_in_dtmf()
    digits: list[str] = []
    dtmf.on_dtmf = digits.append
    for start in (1_000_000, 1_200_000):
        segment, now, length = start, start, 96000
        while True:
            now += 960
            duration = now - segment
            ended = length <= now - start
            if duration > MAX_DURATION:
                dtmf.receive_event(0x55, segment, bytes(TelephoneEvent(5, ended, 10, 0xFFFF)))
                segment, duration = now, duration - MAX_DURATION
            for _ in range(3 if ended else 1):
                dtmf.receive_event(0x55, segment, bytes(TelephoneEvent(5, ended, 10, duration)))
            if ended:
                break
    assert digits == ["5", "5"]


async def test_long_digit_between_legs_in_segments() -> None:
    """A 2 s digit between two legs: two segments on the wire, one digit, then the next."""
    at_b: list[str] = []
    a, b = WebRtcLeg(), WebRtcLeg(on_dtmf=at_b.append)
    try:
        await connect(a, b)
        assert b._dtmf is not None
        seen: list[tuple[int, TelephoneEvent]] = []
        receive = b._dtmf.receive_event

        def record(ssrc: int, timestamp: int, payload: bytes) -> None:
            seen.append((timestamp, TelephoneEvent.parse(payload)))
            receive(ssrc, timestamp, payload)

        b._dtmf.receive_event = record  # type: ignore[method-assign]
        writer = asyncio.ensure_future(write_paced(a, SineSource(1000, 48000, 0.3), 3.5))
        a.send_dtmf("5", duration_ms=2000)
        a.send_dtmf("6", duration_ms=100)
        await wait_for(lambda: len(at_b) >= 2, 10)
        await writer
        assert at_b == ["5", "6"]
        fives = [(ts, event) for ts, event in seen if event.event == 5]
        starts = sorted({ts for ts, _ in fives})
        assert len(starts) == 2 and (starts[1] - starts[0]) & 0xFFFFFFFF == MAX_DURATION
        assert max(event.duration for _, event in fives) == MAX_DURATION
        assert {event.duration for _, event in fives if event.end} == {96000 - MAX_DURATION}
    finally:
        await a.close()
        await b.close()
