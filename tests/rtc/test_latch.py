"""NAT rebinding: a latched RTP stream that goes on from a new address takes the latch
with it (rtc.latch), while a stranger still cannot. Pure tests of the probation, then
RtpLeg through a scripted NAT that changes its public port mid-call (plain RTP and SRTP,
audio checked both ways before and after), then RtpVideo."""

import asyncio
import logging
import socket

import numpy as np
import numpy.typing as npt
import pytest

from rtc.g711 import ulaw_encode
from rtc.latch import PROBATION, TAKEOVER, SourceLatch
from rtc.rtcplink import RtcpLink
from rtc.rtcpsession import RtcpSession
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.rtpvideo import VideoRtpLeg
from rtc.stats import ReceiverStatistics
from tests.audio import SineSource, dominant_frequency
from tests.nat import Nat, through_nat

from .conftest import read_for, wait_for, write_paced
from .test_rtpvideo import phone_offer, vp8_packets, vp8_payload

SSRC = 0x5EED1234
OLD, NEW, OTHER = ("192.0.2.1", 4000), ("192.0.2.1", 61000), ("198.51.100.9", 5000)


def header(seq: int, ssrc: int = SSRC) -> bytes:
    return bytes(RtpPacket(0, seq & 0xFFFF, seq * 160, ssrc, payload=b"\xff" * 160))


def new_latch(receiver: ReceiverStatistics) -> SourceLatch:
    return SourceLatch(receiver, RtcpLink(RtcpSession(1, 8000, "x@y")))


def latched_stream(last_seq: int) -> tuple[ReceiverStatistics, SourceLatch]:
    receiver = ReceiverStatistics(8000)
    for seq in range(last_seq - 9, last_seq + 1):
        receiver.add(SSRC, seq & 0xFFFF, seq * 160, seq * 0.02, 160)
    latch = new_latch(receiver)
    latch.latch(OLD)
    return receiver, latch


# --------------------------------------------------------------------------- probation


def test_the_stream_going_on_from_a_new_address_moves_after_probation() -> None:
    receiver, latch = latched_stream(1000)
    assert PROBATION == 2
    # the NAT's new port: the next packets of the same stream (one lost in the switch)
    assert latch.may_continue(header(1002))
    assert not latch.moved(NEW, 1002)  # dropped: on probation
    assert latch.may_continue(header(1003))
    assert latch.moved(NEW, 1003)  # the second in sequence: the latch moves
    # across the 16-bit wrap, too
    _, latch = latched_stream(0xFFFF)
    assert latch.may_continue(header(0x10000))
    assert not latch.moved(NEW, 0)
    assert latch.moved(NEW, 1)


def test_what_does_not_continue_the_stream_never_moves_it() -> None:
    receiver, latch = latched_stream(1000)
    assert not latch.may_continue(header(1001, ssrc=SSRC ^ 1))  # another stream
    assert not latch.may_continue(header(1000))  # a duplicate of the last one
    assert not latch.may_continue(header(990))  # replayed, behind the stream
    assert not latch.may_continue(header(1000 + 3000))  # too far ahead
    assert not latch.may_continue(header(1001)[:11])  # not even an RTP header
    assert not new_latch(ReceiverStatistics(8000)).may_continue(header(1))  # nothing latched


def offered(latch: SourceLatch, addr: tuple[str, int], seq: int) -> bool:
    """A stranger's packet as the leg hands it over: header first, then the probation."""
    return latch.may_continue(header(seq)) and latch.moved(addr, seq)


def test_probation_restarts_on_another_address_or_out_of_sequence() -> None:
    _, latch = latched_stream(1000)
    assert not offered(latch, NEW, 1001)
    assert not offered(latch, OTHER, 1002)  # another address: starts over
    assert not offered(latch, NEW, 1003)
    assert not latch.moved(NEW, 1003)  # the same number again: starts over
    assert not offered(latch, NEW, 1003 + 200)  # a jump: starts over
    assert offered(latch, NEW, 1003 + 201)
    # a negotiation that moves the SDP address forgets a candidate
    assert not offered(latch, OTHER, 1300)
    latch.reset()
    assert not latch.moved(OTHER, 1301)


def test_after_a_negotiation_the_new_source_takes_over_from_stragglers() -> None:
    """
    A re-INVITE moves the media (relay -> phone, music on hold -> phone): a straggler
    of the old source latches first. The new stream, with its own SSRC, takes the latch
    over: at once when it comes from the SDP's address, else (a NAT) when the stale
    source has gone quiet while the latch is tentative. A stranger cannot do either
    once the latch is on the SDP's address, nor after the stale latch has settled.
    """
    new_ssrc = 0xB0B
    rtcp = RtcpLink(RtcpSession(1, 8000, "x@y"))
    receiver = ReceiverStatistics(8000)
    latch = SourceLatch(receiver, rtcp)

    def arrive(addr: tuple[str, int], seq: int, ssrc: int) -> bool:
        """Accepted (from the latch, or moving it); counted as the leg counts."""
        if latch.address is None:
            latch.latch(addr)
        elif addr != latch.address:
            if not (latch.may_continue(header(seq, ssrc)) and latch.moved(addr, seq)):
                return False
        receiver.add(ssrc, seq & 0xFFFF, seq * 160, seq * 0.02, 160)
        return True

    rtcp.set_remote(OLD, None)
    for seq in range(100, 110):
        assert arrive(OLD, seq, SSRC)
    # the re-INVITE names NEW; one straggler of OLD latches first
    rtcp.set_remote(NEW, None)
    latch.reset()
    assert arrive(OLD, 110, SSRC) and latch.address == OLD
    accepted = [arrive(NEW, seq, new_ssrc) for seq in range(5000, 5005)]
    assert accepted == [False, False, True, True, True] and latch.address == NEW
    # now a stranger (or OLD again) cannot take it: the latch is on the SDP's address
    assert not any(arrive(OTHER, seq, 0x666) for seq in range(1, 10))
    assert not any(arrive(OLD, seq, SSRC) for seq in range(111, 120))
    assert latch.address == NEW

    # behind a NAT: the SDP names an address the packets never come from
    rtcp.set_remote(("10.0.0.5", 4000), None)
    latch.reset()
    assert arrive(NEW, 5005, new_ssrc)  # a straggler of the stale source
    assert [arrive(OTHER, seq, 0x777) for seq in range(10, 13)] == [False, False, True]
    assert latch.address == OTHER
    # the same, but the stale source keeps sending: no takeover
    rtcp.set_remote(("10.0.0.6", 4000), None)
    latch.reset()
    for seq in range(13, 16):
        assert arrive(OTHER, seq, 0x777)  # stale source latched again, still sending
        assert not arrive(NEW, 6000 + seq, 0x888)
    assert latch.address == OTHER
    # and once the stale latch settled, nothing takes it over
    for seq in range(16, 30):
        arrive(OTHER, seq, 0x777)
    assert not any(arrive(NEW, seq, 0x888) for seq in range(7000, 7010))
    assert latch.address == OTHER


# --------------------------------------------------------------------------- RtpLeg


def assert_tone(audio: npt.NDArray[np.int16], rate: int, freq: int) -> None:
    tail = audio[-rate * 2 // 5 :]  # the last 0.4 s
    assert len(tail) == rate * 2 // 5, f"{len(audio)} samples"
    assert dominant_frequency(tail, rate) == pytest.approx(freq, abs=10)


async def test_a_reinvite_moving_the_media_is_followed_despite_a_straggler() -> None:
    """
    A re-INVITE moves the PBX's media from its relay (A) to the phone (B, its own
    SSRC); a packet of A still in flight arrives after our answer and latches. B's
    stream takes the latch over within its first packets, and we send to B, not A.
    """
    leg = await RtpLeg.open("127.0.0.1")
    a, b = (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    )
    try:
        for sock in (a, b):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        offer = (
            b"v=0\r\no=pbx 1 %d IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\na=sendrecv\r\n"
        )
        here = ("127.0.0.1", leg.local_port)
        leg.create_answer(offer % (1, a.getsockname()[1]))
        for seq in range(5):
            a.sendto(header(seq, 0xAAAA), here)
            await asyncio.sleep(0.02)
        leg.create_answer(offer % (2, b.getsockname()[1]))
        a.sendto(header(5, 0xAAAA), here)  # in flight from the old path
        await wait_for(lambda: leg.remote_address == a.getsockname(), 1)
        before = leg.packets_received
        for seq in range(7000, 7025):
            b.sendto(header(seq, 0xBBBB), here)
            await asyncio.sleep(0.02)
        assert leg.remote_address == b.getsockname()
        assert leg.packets_received - before >= 25 - TAKEOVER + 1
    finally:
        await leg.close()
        a.close()
        b.close()


@pytest.mark.parametrize("srtp", ["off", "mandatory"])
async def test_audio_follows_the_phone_when_its_nat_rebinds(
    srtp: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway's leg latches onto the NAT's public port; the NAT then gives the
    phone's stream a new public port mid-call, with no new SDP. The gateway follows the
    stream there (same SSRC, next sequence numbers; authenticated under SRTP), and both
    sides hear each other's tone again: the call does not go one-way."""
    caplog.set_level(logging.INFO, logger="rtc.rtpleg")
    gateway = await RtpLeg.open("127.0.0.1", srtp=srtp)
    phone = await RtpLeg.open("0.0.0.0", advertised_address="203.0.113.7", srtp=srtp)
    nat = await Nat.open()
    nat.gateway = ("127.0.0.1", gateway.local_port)
    writers = asyncio.gather(
        write_paced(gateway, SineSource(1000, 8000, 0.3), 3.0),
        write_paced(phone, SineSource(600, 8000, 0.3), 3.0),
    )
    try:
        gateway.apply_answer(phone.create_answer(through_nat(gateway.create_offer(), nat)))
        at_gateway, at_phone = await asyncio.gather(read_for(gateway, 1.0), read_for(phone, 1.0))
        assert gateway.remote_address == nat.public_address
        assert_tone(at_gateway, 8000, 600)
        assert_tone(at_phone, 8000, 1000)

        await nat.rebind()
        at_gateway, at_phone = await asyncio.gather(read_for(gateway, 1.0), read_for(phone, 1.0))
        assert gateway.remote_address == nat.public_address, "still sending to the old port"
        assert_tone(at_gateway, 8000, 600)
        assert_tone(at_phone, 8000, 1000)
        assert "NAT rebinding" in caplog.text
    finally:
        writers.cancel()
        await asyncio.gather(writers, return_exceptions=True)
        nat.close()
        await gateway.close()
        await phone.close()


async def test_a_stranger_cannot_take_an_srtp_latch_even_knowing_the_stream() -> None:
    """Under SRTP the SSRC and sequence numbers are in the clear, so a stranger who sees
    them can forge a packet that continues the stream; it fails authentication and moves
    nothing. Plain packets replayed from a new address are behind the stream and fail
    too."""
    a = await RtpLeg.open("127.0.0.1", srtp="mandatory")
    b = await RtpLeg.open("127.0.0.1", srtp="mandatory")
    writer = asyncio.ensure_future(write_paced(a, SineSource(1000, 8000, 0.3), 0.6))
    try:
        b.apply_answer(a.create_answer(b.create_offer()))
        peer = ("127.0.0.1", a.local_port)
        await wait_for(lambda: b.remote_address == peer and b.packets_received > 5)
        receiver = b._rtcp.receiver
        assert receiver.ssrc is not None
        received = b.packets_received
        for n in range(1, 20):
            seq = receiver.max_seq + n
            forged = RtpPacket(
                0, seq & 0xFFFF, seq * 160, receiver.ssrc, ulaw_encode(np.zeros(160, np.int16))
            )
            b._datagram_received(bytes(forged) + b"\x00" * 10, ("127.0.0.1", 9))
        assert b.remote_address == peer
        assert b.packets_received - received <= 3  # a's own packets meanwhile, at most
    finally:
        await writer
        await a.close()
        await b.close()


# --------------------------------------------------------------------------- RtpVideo


async def test_video_is_strict_once_latched_and_follows_a_rebinding() -> None:
    leg = await VideoRtpLeg.open("127.0.0.1", 30000, 30999)
    try:
        video = leg.enable_video()
        leg.create_answer(phone_offer(4000, 4002))
        frame = [vp8_payload(b"\x00" * 50, True)]
        packets = [bytes(p) for n in range(8) for p in vp8_packets(frame, 100 + n, n * 3000)]
        video._rtp_received(packets[0], OLD)
        assert video.remote_address == OLD and video.packets_received == 1
        # a stranger's stream (another SSRC) is not taken, nor counted
        for data in vp8_packets(frame * 3, 7, 0, ssrc=0x999):
            video._rtp_received(bytes(data), OTHER)
        assert video.remote_address == OLD and video.packets_received == 1
        # the phone's own stream from a new port: dropped on probation, then followed
        video._rtp_received(packets[1], NEW)
        assert video.remote_address == OLD and video.packets_received == 1
        video._rtp_received(packets[2], NEW)
        assert video.remote_address == NEW and video.packets_received == 2
        # and the old port is now the stranger: its late packets are behind the stream
        video._rtp_received(packets[1], OLD)
        assert video.remote_address == NEW and video.packets_received == 2
    finally:
        await leg.close()
