"""Hold/resume by re-INVITE directions and the media timeout of RtpLeg."""

import asyncio
import socket
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.sdp import SessionDescription
from tests.audio import SineSource, dominant_frequency, rms

from .conftest import read_for, wait_for, write_paced

OFFER = (
    b"v=0\r\no=- 1 %d IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio %d RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=%s\r\n"
)


async def recv_packets(sock: socket.socket, duration: float) -> list[RtpPacket]:
    loop = asyncio.get_running_loop()
    packets: list[RtpPacket] = []
    deadline = loop.time() + duration
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return packets
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), remaining)
        except TimeoutError:
            return packets
        packets.append(RtpPacket.parse(data))


@pytest.fixture
def sink() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_pbx_hold_stops_sending_and_resume_continues_sequence(
    sink: socket.socket,
) -> None:
    port = sink.getsockname()[1]
    leg = await RtpLeg.open()
    try:
        leg.create_answer(OFFER % (1, port, b"sendrecv"))
        assert leg.direction == "sendrecv" and not leg.held
        before = await recv_packets(sink, 0.2)

        # the PBX holds us: we answer recvonly and go quiet
        answer = SessionDescription.parse(leg.create_answer(OFFER % (2, port, b"sendonly")))
        assert answer.audio().direction == "recvonly"
        assert leg.held and leg.direction == "recvonly"
        await asyncio.sleep(0.03)  # a packet may have been in flight
        while True:
            try:
                before.append(RtpPacket.parse(sink.recv(2048)))
            except BlockingIOError:
                break
        assert await recv_packets(sink, 0.3) == []

        leg.create_answer(OFFER % (3, port, b"sendrecv"))
        assert not leg.held
        after = await recv_packets(sink, 0.2)
        assert before and after
        last, first = before[-1], after[0]
        # no gap in sequence numbers (the far end would count one as loss),
        # timestamps kept following the clock, marker on the talk spurt start
        assert first.sequence_number == (last.sequence_number + 1) & 0xFFFF
        assert first.marker
        elapsed = (first.timestamp - last.timestamp) & 0xFFFFFFFF
        assert 0.3 * 8000 < elapsed < 1.5 * 8000
        assert first.ssrc == last.ssrc
    finally:
        await leg.close()


async def test_reoffer_directions_and_version() -> None:
    leg = await RtpLeg.open()
    try:
        first = SessionDescription.parse(leg.create_offer())
        assert first.audio().formats == ["0", "8", "101"]
        with pytest.raises(ValueError):
            leg.create_offer("hold")
        # answer with PCMA and no telephone-event
        answer = OFFER.replace(b"RTP/AVP 0 101", b"RTP/AVP 8") % (1, 40000, b"sendrecv")
        leg.apply_answer(answer)
        hold = SessionDescription.parse(leg.create_offer("sendonly"))
        assert hold.audio().formats == ["8"]
        assert hold.audio().direction == "sendonly"
        assert hold.audio().port == leg.local_port
        assert hold.origin.session_id == first.origin.session_id
        assert hold.origin.session_version == first.origin.session_version + 1
        leg.apply_answer(answer.replace(b"a=sendrecv", b"a=recvonly"))
        assert leg.direction == "sendonly" and leg.held
        leg.create_offer("inactive")
        leg.apply_answer(answer)
        assert leg.direction == "inactive"
    finally:
        await leg.close()


async def test_audio_before_during_and_after_hold() -> None:
    a = await RtpLeg.open()
    b = await RtpLeg.open()
    try:
        a.apply_answer(b.create_answer(a.create_offer()))

        async def exchange(
            duration: float,
        ) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
            writers = asyncio.gather(
                write_paced(a, SineSource(1000, 8000, 0.3), duration),
                write_paced(b, SineSource(600, 8000, 0.3), duration),
            )
            at_b, at_a = await asyncio.gather(read_for(b, duration), read_for(a, duration))
            await writers
            return at_b, at_a

        at_b, at_a = await exchange(0.6)
        assert dominant_frequency(at_b[-2400:], 8000) == pytest.approx(1000, abs=5)
        assert dominant_frequency(at_a[-2400:], 8000) == pytest.approx(600, abs=5)

        # a holds b: a only sends (music on hold), b's audio is not wanted
        a.apply_answer(b.create_answer(a.create_offer("sendonly")))
        assert (a.direction, b.direction) == ("sendonly", "recvonly")
        sent_by_b = b.packets_sent
        at_b, at_a = await exchange(0.5)
        assert b.packets_sent == sent_by_b
        assert rms(at_a) == 0.0
        assert dominant_frequency(at_b[-2400:], 8000) == pytest.approx(1000, abs=5)

        # resume: audio both ways again
        a.apply_answer(b.create_answer(a.create_offer("sendrecv")))
        assert not a.held and not b.held
        at_b, at_a = await exchange(0.6)
        assert dominant_frequency(at_b[-2400:], 8000) == pytest.approx(1000, abs=5)
        assert dominant_frequency(at_a[-2400:], 8000) == pytest.approx(600, abs=5)
        assert rms(at_a[-2400:]) > 0.15
    finally:
        await a.close()
        await b.close()


async def test_media_timeout_fires_once_and_not_while_held(sink: socket.socket) -> None:
    port = sink.getsockname()[1]
    fired: list[float] = []
    leg = await RtpLeg.open(media_timeout=0.5)
    leg.on_timeout = lambda: fired.append(asyncio.get_running_loop().time())
    try:
        start = asyncio.get_running_loop().time()
        leg.create_answer(OFFER % (1, port, b"sendrecv"))
        await wait_for(lambda: bool(fired), 2)
        # Wide bounds: a loaded machine runs the loop late, never early.
        assert 0.45 < fired[0] - start < 2.0
        await asyncio.sleep(0.7)
        assert len(fired) == 1
        assert leg.last_received is None

        # on hold (inactive) silence is expected
        leg.create_answer(OFFER % (2, port, b"inactive"))
        await asyncio.sleep(0.8)
        assert len(fired) == 1

        # resumed with media flowing: no timeout; packets update last_received
        leg.create_answer(OFFER % (3, port, b"sendrecv"))
        for seq in range(25):
            packet = RtpPacket(0, seq, seq * 160, 7, payload=b"\xff" * 160)
            sink.sendto(bytes(packet), ("127.0.0.1", leg.local_port))
            await asyncio.sleep(0.02)
        assert len(fired) == 1
        assert leg.last_received is not None
        await wait_for(lambda: len(fired) == 2, 4)  # and again once the packets stop
    finally:
        await leg.close()


async def test_an_old_style_hold_is_a_hold_for_the_media_timeout(sink: socket.socket) -> None:
    """
    RFC 2543's hold, c=0.0.0.0 with sendrecv (RFC 3264 8.4: still to be understood):
    the PBX sends nothing while it holds, and the leg sends nothing to it. That is a
    hold, not a dead call: no media timeout until it resumes.
    """
    port = sink.getsockname()[1]
    fired: list[float] = []
    leg = await RtpLeg.open(media_timeout=0.3)
    leg.on_timeout = lambda: fired.append(asyncio.get_running_loop().time())
    try:
        leg.create_answer(OFFER % (1, port, b"sendrecv"))
        assert not leg.held
        zero = (OFFER % (2, port, b"sendrecv")).replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0")
        leg.create_answer(zero)
        assert leg.held and leg.direction == "sendrecv"
        await asyncio.sleep(0.8)
        assert fired == []
        # resumed: silence counts again, from the resumption (not from before the hold)
        resumed = asyncio.get_running_loop().time()
        leg.create_answer(OFFER % (3, port, b"sendrecv"))
        assert not leg.held
        await wait_for(lambda: bool(fired), 2)
        assert fired[0] - resumed > 0.25
    finally:
        await leg.close()


async def test_media_timeout_restarts_when_asked(sink: socket.socket) -> None:
    """A timeout that fired while nobody cared (a long ring) counts again from a restart
    (the answer), with no packet needed."""
    port = sink.getsockname()[1]
    fired: list[float] = []
    leg = await RtpLeg.open(media_timeout=0.3)
    leg.on_timeout = lambda: fired.append(asyncio.get_running_loop().time())
    loop = asyncio.get_running_loop()
    try:
        leg.create_answer(OFFER % (1, port, b"sendrecv"))
        await wait_for(lambda: bool(fired), 2)  # fired during the "ring"
        await asyncio.sleep(0.5)
        assert len(fired) == 1
        restart = loop.time()
        leg.restart_media_timeout()  # answered
        await wait_for(lambda: len(fired) == 2, 2)
        assert 0.25 < fired[1] - restart < 1.5
    finally:
        await leg.close()
