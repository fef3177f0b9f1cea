"""DTMF across RtpLegs: RFC 4733 events and in-band tones, each digit once."""

import asyncio
import socket

import numpy as np
import pytest

from rtc.dtmf import DIGITS, TelephoneEvent
from rtc.g711 import ulaw_encode
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.tones import dtmf_tone

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


@pytest.mark.parametrize("impairment", ["swapped", "duplicated"])
async def test_inband_digits_relayed_undecoded_are_detected_in_playout_order(
    impairment: str,
) -> None:
    """
    Pass-through with in-band DTMF (no telephone-event): the detector decodes the relayed
    frames in the order the playout buffer releases them, so two packets of a tone that
    arrive swapped, or one that arrives twice, still make one key press (fed as they
    arrived, the tone broke in two: the digit came twice).
    """
    received: list[str] = []
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    leg = await RtpLeg.open(on_dtmf=received.append)
    try:
        leg.create_answer(
            OFFER.replace(b" 101\r\n", b"\r\n").replace(
                b"a=rtpmap:101 telephone-event/8000\r\n", b""
            )
            % peer.getsockname()[1]
        )
        leg.set_passthrough(lambda name: True)
        loop = asyncio.get_running_loop()
        for index, (digit, first) in enumerate((("0", 3), ("5", 4), ("#", 5))):
            audio = np.concatenate(
                [np.zeros(800, np.int16), dtmf_tone(digit, 200), np.zeros(1600, np.int16)]
            )
            packets = [
                bytes(
                    RtpPacket(
                        0, seq & 0xFFFF, seq * 160, 77, payload=ulaw_encode(audio[k : k + 160])
                    )
                )
                for seq, k in enumerate(range(0, len(audio) - 159, 160), start=index * 1000)
            ]
            k = 5 + first
            # when each goes out: every 20 ms; swapped: k + 1 at 12 ms into k's slot and
            # k at 14 ms (within the jitter buffer's wait: reordered, not lost)
            times = [n * 0.02 for n in range(len(packets))]
            if impairment == "swapped":
                times[k], times[k + 1] = k * 0.02 + 0.014, k * 0.02 + 0.012
            else:
                packets.insert(k + 1, packets[k])
                times.insert(k + 1, k * 0.02 + 0.002)
            start = loop.time()
            for when, data in sorted(zip(times, packets, strict=True), key=lambda item: item[0]):
                await asyncio.sleep(start + when - loop.time())
                peer.sendto(data, ("127.0.0.1", leg.local_port))
            await asyncio.sleep(0.2)
        leg._sync_circuits()  # what a circuit relayed counts once synced
        assert leg.frames_passed >= 3 * 25
        assert received == ["0", "5", "#"]
    finally:
        await leg.close()
        peer.close()


async def test_events_on_every_telephone_event_type_the_answer_kept() -> None:
    """
    We offer telephone-event at 8000 and at Opus' 48000; an answer that keeps both may
    send either (RFC 3264 6.1): digits on the 8000 one are not dropped as not negotiated.
    """
    received: list[str] = []
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    leg = await RtpLeg.open(codecs=("opus", "PCMU"), on_dtmf=received.append)
    try:
        offer = leg.create_offer().decode()
        events = {
            int(line.split(":")[1].split()[0]): line.split()[1]
            for line in offer.splitlines()
            if "telephone-event" in line and line.startswith("a=rtpmap:")
        }
        opus = next(
            int(line.split(":")[1].split()[0])
            for line in offer.splitlines()
            if line.startswith("a=rtpmap:") and "opus" in line
        )
        eight = next(pt for pt, name in events.items() if name == "telephone-event/8000")
        assert len(events) == 2
        answer = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {peer.getsockname()[1]} RTP/AVP {opus} {' '.join(map(str, events))}\r\n"
            f"a=rtpmap:{opus} opus/48000/2\r\n"
            + "".join(f"a=rtpmap:{pt} {name}\r\n" for pt, name in events.items())
            + "a=sendrecv\r\n"
        )
        leg.apply_answer(answer.encode())
        for n, end in enumerate((False, False, True, True, True)):
            event = TelephoneEvent(7, end, 10, 400 * (n + 1))
            packet = RtpPacket(eight, 100 + n, 8000, 99, marker=n == 0, payload=bytes(event))
            peer.sendto(bytes(packet), ("127.0.0.1", leg.local_port))
        await wait_for(lambda: bool(received), 2)
        assert received == ["7"]
    finally:
        await leg.close()
        peer.close()
