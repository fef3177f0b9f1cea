"""DTMF across RtpLegs: RFC 4733 events and in-band tones, each digit once."""

import asyncio
import socket

import pytest

from rtc.dtmf import DIGITS, TelephoneEvent
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg

from .conftest import wait_for

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio %d RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


async def pair(telephone_event: bool) -> tuple[RtpLeg, RtpLeg, list[str]]:
    received: list[str] = []
    a = await RtpLeg.open()
    b = await RtpLeg.open(on_dtmf=received.append)
    offer = a.create_offer()
    if not telephone_event:
        offer = offer.replace(b" 101\r\n", b"\r\n")
    a.apply_answer(b.create_answer(offer))
    return a, b, received


@pytest.mark.parametrize("telephone_event", [True, False], ids=["rfc4733", "inband"])
async def test_every_digit_arrives_exactly_once(telephone_event: bool) -> None:
    a, b, received = await pair(telephone_event)
    try:
        assert a.dtmf_mode == ("rfc4733" if telephone_event else "inband")
        # tones as long as a browser's (100 ms): a loaded machine's late frames may cost
        # a tone a frame or two, and the detector needs 40 ms of it
        a.send_dtmf(DIGITS, duration_ms=60 if telephone_event else 100)
        a.send_dtmf("11")  # a repeated digit is two key presses
        await wait_for(lambda: len(received) >= 18, 20)
        await asyncio.sleep(0.3)  # and nothing more comes
        assert "".join(received) == DIGITS + "11"
    finally:
        await a.close()
        await b.close()


async def test_rfc4733_packets_on_the_wire() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    leg = await RtpLeg.open()
    loop = asyncio.get_running_loop()
    try:
        leg.create_answer(OFFER % sink.getsockname()[1])
        await asyncio.sleep(0.1)
        with pytest.raises(ValueError):
            leg.send_dtmf("1x")
        leg.send_dtmf("5", duration_ms=200)
        packets = []
        deadline = loop.time() + 0.6
        while loop.time() < deadline:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sink, 2048), 0.1)
            except TimeoutError:
                continue
            packets.append(RtpPacket.parse(data))
        events = [p for p in packets if p.payload_type == 101]
        parsed = [TelephoneEvent.parse(p.payload) for p in events]
        # updates every 50 ms with the duration so far, three end packets
        assert [e.duration for e in parsed] == [400, 800, 1200, 1600, 1600, 1600]
        assert [e.end for e in parsed] == [False] * 3 + [True] * 3
        assert all(e.event == 5 and e.volume == 10 for e in parsed)
        assert [p.marker for p in events] == [True] + [False] * 5
        assert len({p.timestamp for p in events}) == 1
        # one sequence: audio stops during the event and resumes after it
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        first, last = packets.index(events[0]), packets.index(events[-1])
        assert all(p.payload_type == 0 for p in packets[:first] + packets[last + 1 :])
        assert packets[first : last + 1] == events
        before = packets[first - 1]
        # the event starts where the next audio packet would have
        assert (events[0].timestamp - before.timestamp) & 0xFFFFFFFF == 160
        assert packets[last + 1].marker
    finally:
        sink.close()
        await leg.close()
