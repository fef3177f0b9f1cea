"""Video toward a SIP phone (rtc.rtpvideo): SDP negotiation, frame re-assembly, keyframe
requests both ways and frames relayed to and from an aiortc browser, with a scripted phone
(a UDP socket pair speaking RTP/RTCP)."""

import asyncio
import contextlib
import fractions
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from av import VideoFrame

from rtc.rtcp import RtcpFirPacket, RtcpPliPacket, RtcpRrPacket, RtcpSrPacket, parse_rtcp
from rtc.rtp import RtpPacket, is_rtcp
from rtc.rtpvideo import (
    MAX_FRAME_BYTES,
    MAX_FRAME_PACKETS,
    FrameAssembler,
    RtpVideo,
    VideoRtpLeg,
    bandwidth_limit,
    h264_profile_supported,
)
from rtc.sdp import SessionDescription
from rtc.videolink import VideoLink
from rtc.webrtcleg import WebRtcLeg
from rtc.webrtcvideo import EncodedVideoTrack, OutgoingVideoTrack

from .conftest import wait_for
from .test_webrtcvideo import Browser, dominant_channel, lit_frames

PHONE_VP8_H264 = """v=0
o=phone 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {audio} RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video {video} RTP/AVP {formats}
b=AS:{bitrate}
a=rtpmap:100 VP8/90000
a=rtpmap:101 H264/90000
a=fmtp:101 packetization-mode=1;profile-level-id=42801f
a=rtpmap:102 H264/90000
a=fmtp:102 packetization-mode=0;profile-level-id=42801f
a=rtpmap:103 H263-1998/90000
a=rtcp-fb:* nack pli
a=rtcp-fb:* ccm fir
a=sendrecv
"""


def phone_offer(audio: int, video: int, formats: str = "100 101", bitrate: int = 800) -> bytes:
    return PHONE_VP8_H264.format(
        audio=audio, video=video, formats=formats, bitrate=bitrate
    ).encode()


class Phone(asyncio.DatagramProtocol):
    """A scripted SIP phone's video: what arrives on its RTP and RTCP ports."""

    def __init__(self) -> None:
        self.rtp: list[RtpPacket] = []
        self.rtcp: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.rtcp_transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def open(cls) -> "Phone":
        loop = asyncio.get_running_loop()
        phone = cls()
        for port in range(31000, 32000, 2):
            try:
                phone.transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Sink(phone.rtp_in), local_addr=("127.0.0.1", port)
                )
            except OSError:
                continue
            try:
                phone.rtcp_transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Sink(phone.rtcp.append), local_addr=("127.0.0.1", port + 1)
                )
            except OSError:
                phone.transport.close()
                continue
            phone.port = port
            return phone
        raise OSError("no port")

    def rtp_in(self, data: bytes) -> None:
        if 192 <= data[1] <= 223:
            self.rtcp.append(data)
        else:
            self.rtp.append(RtpPacket.parse(data))

    def feedback(self) -> list[object]:
        packets: list[object] = []
        for data in self.rtcp:
            packets += parse_rtcp(data)
        return [p for p in packets if isinstance(p, RtcpPliPacket | RtcpFirPacket)]

    def close(self) -> None:
        for transport in (self.transport, self.rtcp_transport):
            if transport is not None:
                transport.close()


class _Sink(asyncio.DatagramProtocol):
    def __init__(self, on_data) -> None:  # type: ignore[no-untyped-def]
        self._on_data = on_data

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_data(data)


class PhoneCamera:
    """
    A phone's camera: frames with a green bar (the phone's) moving across,
    encoded by aiortc's encoder of ``codec``, sent as RTP (SSRC 0x4321) to
    ``port`` 30 times a second, a keyframe every ``keyframe_every`` frames.
    ``extra(seq, timestamp)`` gives datagrams to send before each packet.
    """

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        port: int,
        codec: str,
        keyframe_every: int = 30,
        extra: Callable[[int, int], list[bytes]] | None = None,
    ) -> None:
        self._transport = transport
        self._to = ("127.0.0.1", port)
        self._encoder = Vp8Encoder() if codec == "VP8" else H264Encoder()
        self._pt = 100 if codec == "VP8" else 101
        self._keyframe_every = keyframe_every
        self._extra = extra
        self.frames = 0

    async def run(self) -> None:
        seq, n = 100, 0
        while True:
            image = np.full((240, 320, 3), 60, dtype=np.uint8)
            image[:, (n * 8) % 240 : (n * 8) % 240 + 80] = (20, 230, 20)
            frame = VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = n * 3000
            frame.time_base = fractions.Fraction(1, 90000)
            keyframe = n % self._keyframe_every == 0
            payloads, timestamp = self._encoder.encode(frame, force_keyframe=keyframe)
            for i, payload in enumerate(payloads):
                for data in self._extra(seq, timestamp) if self._extra is not None else ():
                    self._transport.sendto(data, self._to)
                last = i == len(payloads) - 1
                packet = RtpPacket(self._pt, seq & 0xFFFF, timestamp, 0x4321, payload, last)
                seq += 1
                self._transport.sendto(bytes(packet), self._to)
            n += 1
            self.frames = n
            await asyncio.sleep(1 / 30)


def vp8_packets(payloads: list[bytes], seq: int, ts: int, ssrc: int = 0x1234) -> list[RtpPacket]:
    return [
        RtpPacket(100, (seq + i) & 0xFFFF, ts, ssrc, p, marker=i == len(payloads) - 1)
        for i, p in enumerate(payloads)
    ]


def vp8_payload(data: bytes, start: bool) -> bytes:
    # RFC 7741 descriptor: no extensions, S bit on the first packet, partition 0
    return bytes([0x10 if start else 0x00]) + data


def test_h264_profiles() -> None:
    assert h264_profile_supported("42e01f")  # constrained baseline
    assert h264_profile_supported("42001f")  # baseline
    assert h264_profile_supported("4d801f")  # main, constrained-baseline compatible
    assert not h264_profile_supported("4d001f")  # main
    assert not h264_profile_supported("640c1f")  # high
    assert not h264_profile_supported("zz")


def test_bandwidth_limit() -> None:
    session = SessionDescription.parse(phone_offer(4000, 4002, bitrate=512))
    assert bandwidth_limit(session, session.media[1]) == 512_000
    session.media[1].bandwidth.append("TIAS:300000")
    assert bandwidth_limit(session, session.media[1]) == 300_000
    assert bandwidth_limit(session, session.media[0]) is None


def test_frames_are_assembled_in_order_and_losses_reported() -> None:
    assembler = FrameAssembler("VP8")
    first = vp8_packets([vp8_payload(b"\x00key", True), vp8_payload(b"more", False)], 10, 1000)
    second = vp8_packets([vp8_payload(b"\x01delta", True)], 12, 4000)
    # reordered: the second frame waits for the first
    frames, lost = assembler.add(first[1])
    assert frames == [] and not lost
    frames, lost = assembler.add(second[0])
    assert frames == [] and not lost
    frames, lost = assembler.add(first[0])
    assert [(f.data, f.timestamp) for f in frames] == [
        (b"\x00keymore", 1000),
        (b"\x01delta", 4000),
    ]
    # a lost packet: the frame is given up once enough newer ones wait
    gone = vp8_packets([vp8_payload(b"\x01a", True), vp8_payload(b"b", False)], 13, 7000)
    assembler.add(gone[0])
    losses = []
    delivered = []
    for n in range(4):
        frames, lost = assembler.add(
            vp8_packets([vp8_payload(b"\x01x", True)], 15 + n, 10000 + n * 3000)[0]
        )
        losses.append(lost)
        delivered += frames
    assert any(losses)
    assert assembler.lost == 1
    assert [f.timestamp for f in delivered] == [10000 + n * 3000 for n in range(4)]


def test_a_frame_never_closed_is_bounded_and_given_up() -> None:
    """Packets of one timestamp that never carry the marker bit: the frame is given up as
    lost past MAX_FRAME_PACKETS (or MAX_FRAME_BYTES) instead of growing without bound,
    and well-formed frames after it are still assembled."""
    assembler = FrameAssembler("VP8")
    losses = 0
    for seq in range(5000):
        packet = RtpPacket(100, seq, 1000, 0x1234, vp8_payload(bytes([seq & 0xFF]) * 1199, True))
        frames, lost = assembler.add(packet)
        assert frames == []
        losses += lost
        assert sum(len(p.packets) for p in assembler._pending.values()) <= MAX_FRAME_PACKETS
    assert losses == assembler.lost == 5000 // (MAX_FRAME_PACKETS + 1)
    # big packets: the byte cap
    big = FrameAssembler("H264")
    for seq in range(MAX_FRAME_BYTES // 60000 + 2):
        big.add(RtpPacket(101, seq, 1000, 0x1234, b"\x7c\x05" + bytes(60000)))
        assert sum(p.size for p in big._pending.values()) <= MAX_FRAME_BYTES
    assert big.lost == 1
    # a stream of good frames after it: the rest of the unclosed frame is given up once
    # MAX_PENDING_FRAMES newer ones wait, as for a frame missing a packet
    delivered = []
    for n in range(4):
        packet = vp8_packets([vp8_payload(b"\x00key", True)], 5000 + n, 4000 + n * 3000)[0]
        frames, _ = assembler.add(packet)
        delivered += frames
    assert [(f.data, f.timestamp) for f in delivered] == [
        (b"\x00key", 4000 + n * 3000) for n in range(4)
    ]
    assert not assembler._pending


def test_padding_only_packets_take_no_frame() -> None:
    """Padding-only packets (RFC 3550 5.1, an empty payload: libwebrtc's bandwidth probes)
    only fill their sequence numbers: every frame around them comes out, in order, nothing is
    lost, wherever they fall (after a frame, behind the frame after it, several reordered,
    inside a frame), and none is left waiting. Before, one became a frame that never
    completed: the frames behind it stalled, then it was given up as lost (a PLI, and the
    stalled frames thrown away while waiting for the keyframe)."""

    def padding(seq: int, ts: int) -> RtpPacket:
        # as a sender puts it on the wire: P bit, nothing left once the padding is removed
        return RtpPacket.parse(bytes(RtpPacket(100, seq, ts, 0x1234, b"", padding_size=200)))

    def frame(seq: int, ts: int, key: bool = False) -> list[RtpPacket]:
        first = b"\x00key" if key else b"\x01delta"
        return vp8_packets([vp8_payload(first, True), vp8_payload(b"more", False)], seq, ts)

    assembler = FrameAssembler("VP8")
    # sequence numbers: a 10-11, padding 12, b 13-14, padding 15, c 16-17, padding 18-20,
    # d 21-22, padding 23, e 24 + padding 25 + 26, f 27-28
    a, b, c, d, f = (
        frame(10, 0, True),
        frame(13, 3000),
        frame(16, 6000),
        frame(21, 9000),
        frame(27, 15000),
    )
    e_end = RtpPacket(100, 26, 12000, 0x1234, vp8_payload(b"end", False), marker=True)
    arrivals = [
        *a,
        padding(12, 0),  # after a frame, with its timestamp
        *c,  # overtakes b and the padding behind it
        padding(15, 3000),
        *b,  # c now follows b without a gap
        padding(20, 6000),  # reordered among themselves
        padding(19, 6000),
        padding(18, 6000),
        d[0],
        padding(23, 9000),  # ahead of the end of d
        d[1],
        RtpPacket(100, 24, 12000, 0x1234, vp8_payload(b"\x01delta", True)),
        padding(25, 12000),  # inside a frame: skipped
        e_end,
        *f,
    ]
    delivered = []
    for packet in arrivals:
        frames, lost = assembler.add(packet)
        assert not lost, packet
        delivered += frames
    assert [(f.timestamp, f.data) for f in delivered] == [
        (0, b"\x00keymore"),
        (3000, b"\x01deltamore"),
        (6000, b"\x01deltamore"),
        (9000, b"\x01deltamore"),
        (12000, b"\x01deltaend"),
        (15000, b"\x01deltamore"),
    ]
    assert assembler.lost == 0 and not assembler._pending and not assembler._padding
    assert assembler.add(padding(12, 0)) == ([], False)  # a late duplicate changes nothing

    # resuming at a keyframe after a loss: padding seen meanwhile, now behind, is forgotten
    # (kept, it would pass for a missing packet once the sequence numbers wrap around)
    resumed = FrameAssembler("VP8")
    resumed.add(padding(5, 0))
    key = frame(100, 3000, True)
    resumed.add(key[0])
    frames, lost = resumed.add(key[1])
    assert [f.timestamp for f in frames] == [3000] and not lost
    assert not resumed._padding


async def test_offer_answer_and_rejection() -> None:
    leg = await VideoRtpLeg.open("127.0.0.1", 30000, 30999)
    try:
        # audio only until video is enabled
        offer = SessionDescription.parse(leg.create_offer())
        assert [m.kind for m in offer.media] == ["audio"]
        answer = SessionDescription.parse(leg.create_answer(phone_offer(4000, 4002)))
        assert [(m.kind, m.port) for m in answer.media] == [("audio", leg.local_port), ("video", 0)]

        video = leg.enable_video()
        # the phone prefers VP8
        answer = SessionDescription.parse(leg.create_answer(phone_offer(4000, 4002)))
        media = answer.media[1]
        assert media.port == video.local_port and media.port != 0
        assert [c.name for c in media.codecs] == ["VP8"] and media.formats == ["100"]
        assert "AS:2000" in media.bandwidth
        assert video.video_codec == "video/VP8" and video.max_bitrate == 800_000
        assert ("rtcp-fb", "100 ccm fir") in media.attributes
        # VP8 is taken even when the phone prefers H.264 (every browser has VP8)
        answer = SessionDescription.parse(leg.create_answer(phone_offer(4000, 4002, "101 100")))
        assert answer.media[1].formats == ["100"]
        # H.264 in packetization mode 1 only; the profile is repeated
        answer = SessionDescription.parse(leg.create_answer(phone_offer(4000, 4002, "102 101")))
        media = answer.media[1]
        assert media.formats == ["101"]
        assert media.fmtp[101] == "profile-level-id=42801f;packetization-mode=1"
        # nothing shared: rejected with port 0 (RFC 3264 6)
        answer = SessionDescription.parse(leg.create_answer(phone_offer(4000, 4002, "102 103")))
        assert answer.media[1].port == 0 and not video.has_video
        # our offer: VP8 and H.264, b=AS; the answer picks one
        offer = SessionDescription.parse(leg.create_offer())
        media = offer.media[1]
        assert media.kind == "video" and [c.name for c in media.codecs] == ["VP8", "H264"]
        assert "packetization-mode=1" in (media.fmtp[97] or "")
        leg.apply_answer(phone_offer(4000, 4002, "101"))
        assert video.video_codec == "video/H264"
        # a re-offer (hold) keeps the negotiated codec only
        offer = SessionDescription.parse(leg.create_offer("sendonly"))
        assert [c.name for c in offer.media[1].codecs] == ["H264"]
        assert offer.media[1].direction == "sendonly"
        # an answer rejecting video
        leg.apply_answer(phone_offer(4000, 0, "101"))
        assert not video.has_video
    finally:
        await leg.close()


async def test_our_bit_rate_is_announced_and_caps_the_browser() -> None:
    """bitrate_kbps ([media] video_bit_rate) is the b=AS of our offers and answers; the
    cap on the browser's sending is the lower of it and the phone's b=AS (ours alone
    when the phone gives none)."""
    leg = await VideoRtpLeg.open("127.0.0.1", 30000, 30999)
    try:
        video = leg.enable_video(bitrate_kbps=500)
        offer = SessionDescription.parse(leg.create_offer())
        assert offer.media[1].bandwidth == ["AS:500"]
        for phone_as, cap in ((800, 500_000), (300, 300_000), (None, 500_000)):
            sdp = phone_offer(4000, 4002, bitrate=phone_as or 1).decode()
            if phone_as is None:
                sdp = sdp.replace("b=AS:1\n", "")
            answer = SessionDescription.parse(leg.create_answer(sdp.encode()))
            assert answer.media[1].bandwidth == ["AS:500"]
            assert (video.remote_bitrate, video.max_bitrate) == (
                phone_as and phone_as * 1000,
                cap,
            ), phone_as
        # applying an answer to our offer: the same rule
        leg.create_offer()
        leg.apply_answer(phone_offer(4000, 4002, "100", bitrate=2000))
        assert video.max_bitrate == 500_000
    finally:
        await leg.close()


async def _negotiated_with(
    phone: Phone, codecs: tuple[str, ...] = ("VP8",), bitrate: int = 800
) -> RtpVideo:
    leg_video = await RtpVideo.open("127.0.0.1", 30000, 30999, codecs=codecs)
    offer = SessionDescription.parse(phone_offer(4000, phone.port, bitrate=bitrate))
    assert leg_video.answer_media(offer, offer.media[1]) is not None
    return leg_video


class Recorder:
    """Stands in for the browser side of an EncodedVideoTrack: counts keyframe requests."""

    receive_codec = "video/VP8"

    def __init__(self) -> None:
        self.requests = 0

    def request_keyframe(self, refresh: bool = False) -> None:
        self.requests += 1

    def _unsubscribe(self, track: EncodedVideoTrack) -> None:
        pass


async def test_keyframe_requests_are_forwarded_both_ways() -> None:
    phone = await Phone.open()
    video = await _negotiated_with(phone)
    try:
        # the browser's frames go to the phone; a PLI and a FIR from the phone ask the browser
        browser = Recorder()
        source = EncodedVideoTrack(browser)
        video.set_video_source(source)
        requests_before = browser.requests  # attaching asks for a keyframe once
        assert phone.transport is not None and phone.rtcp_transport is not None
        gateway_rtcp = ("127.0.0.1", video.local_port + 1)
        phone.rtcp_transport.sendto(bytes(RtcpPliPacket(0x1234, video._ssrc)), gateway_rtcp)
        await wait_for(lambda: browser.requests == requests_before + 1, 3)
        fir = RtcpFirPacket(0x1234, [(video._ssrc, 1)])
        phone.rtcp_transport.sendto(bytes(fir), gateway_rtcp)
        await wait_for(lambda: browser.requests == requests_before + 2, 3)
        # feedback for another SSRC is not ours
        phone.rtcp_transport.sendto(bytes(RtcpPliPacket(0x1234, 0x999)), gateway_rtcp)
        await asyncio.sleep(0.2)
        assert browser.requests == requests_before + 2
        assert video.keyframe_requests_received == 2

        # a new receiver on the browser side -> PLI and FIR (negotiated) to the phone
        track = video.subscribe_encoded()
        assert phone.feedback() == []  # the phone's SSRC is not known yet
        packet = vp8_packets([vp8_payload(b"\x00" * 10, True)], 1, 1000)[0]
        phone.transport.sendto(bytes(packet), ("127.0.0.1", video.local_port))
        await wait_for(lambda: len(phone.feedback()) >= 2, 3)
        kinds = {type(p) for p in phone.feedback()}
        assert kinds == {RtcpPliPacket, RtcpFirPacket}
        pli = next(p for p in phone.feedback() if isinstance(p, RtcpPliPacket))
        assert pli.media_ssrc == 0x1234
        await asyncio.sleep(0.35)  # rate limit
        count = len(phone.feedback())
        track.request_keyframe()  # picture loss on the browser side: a PLI alone
        await wait_for(lambda: len(phone.feedback()) > count, 3)
        assert [type(p) for p in phone.feedback()[count:]] == [RtcpPliPacket]
        track.stop()
    finally:
        await video.close()
        phone.close()


class _Wire:
    """Stands in for RtpVideo's sockets: keeps what it sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass

    def feedback(self) -> list[str]:
        """The keyframe requests sent, one string per RTCP packet: 'PLI', 'FIR <seq nr>'."""
        kinds = []
        for data in self.sent:
            if not is_rtcp(data):
                continue
            for packet in parse_rtcp(data):
                if isinstance(packet, RtcpPliPacket):
                    kinds.append("PLI")
                elif isinstance(packet, RtcpFirPacket):
                    kinds += [f"FIR {seq}" for _, seq in packet.entries]
        self.sent.clear()
        return kinds


def _video_on_wire(fir: bool = True, pli: bool = True) -> tuple[RtpVideo, _Wire]:
    """An RtpVideo negotiated with a phone (``ccm fir``, ``nack pli`` or not), its
    sockets a _Wire."""
    video = RtpVideo("127.0.0.1")
    sdp = phone_offer(4000, 40000).decode()
    if not fir:
        sdp = sdp.replace("a=rtcp-fb:* ccm fir\n", "")
    if not pli:
        assert "a=rtcp-fb:* nack pli\n" in sdp
        sdp = sdp.replace("a=rtcp-fb:* nack pli\n", "")
    offer = SessionDescription.parse(sdp.encode())
    assert video.answer_media(offer, offer.media[1]) is not None
    wire = _Wire()
    video._transport = video._rtcp_transport = wire  # type: ignore[assignment]
    return video, wire


async def test_fir_only_for_a_decoder_refresh() -> None:
    """RFC 5104 4.3.1.2: FIR is not sent for picture loss (PLI is); it is for a decoder
    refresh without which the video is unusable (3.5.1: a new receiver, a switched source).
    So a new subscriber of the phone's video and the browser's sender switched to it get
    PLI + FIR (ccm fir negotiated; PLI only otherwise), while a lost packet and a PLI the
    browser sends (forwarded) get a PLI only. Before, every request carried a FIR."""
    video, wire = _video_on_wire()
    phone = ("127.0.0.1", 40000)

    def packet(seq: int, ts: int, start: bool, marker: bool) -> bytes:
        data = vp8_payload(b"\x00key" if start else b"more", start)
        return bytes(RtpPacket(100, seq, ts, 0x1234, data, marker=marker))

    def after_rate_limit() -> None:
        video._last_keyframe_request = None

    try:
        # a receiver subscribes before the phone's SSRC is known: asked for on its first packet
        track = video.subscribe_encoded()
        assert wire.feedback() == []
        video._rtp_received(packet(1, 0, True, False), phone)
        assert wire.feedback() == ["PLI", "FIR 1"]
        video._rtp_received(packet(2, 0, False, True), phone)
        # a packet lost: the frame is given up once MAX_PENDING_FRAMES newer ones wait
        after_rate_limit()
        for n in range(5):
            seq = 4 + 2 * n  # 3 lost
            video._rtp_received(packet(seq, 3000 * (n + 1), True, False), phone)
            video._rtp_received(packet(seq + 1, 3000 * (n + 1), False, True), phone)
        assert video._assembler is not None and video._assembler.lost == 1
        assert wire.feedback() == ["PLI"]
        # the browser's sender switched to the phone's video: its decoder needs a refresh
        after_rate_limit()
        outgoing = OutgoingVideoTrack()
        outgoing.set_source(track)
        assert wire.feedback() == ["PLI", "FIR 2"]
        # the browser lost picture and asks (forwarded): loss, a PLI
        after_rate_limit()
        outgoing.keyframe_requested()
        assert wire.feedback() == ["PLI"]
        # a second subscriber: a new receiver again
        after_rate_limit()
        second = video.subscribe_encoded()
        assert wire.feedback() == ["PLI", "FIR 3"]
        second.stop()
        track.stop()
        outgoing.stop()
    finally:
        await video.close()

    # without ccm fir negotiated: PLI only, refresh or not
    video, wire = _video_on_wire(fir=False)
    try:
        video._rtp_received(packet(1, 0, True, True), phone)
        video.subscribe_encoded()
        assert wire.feedback() == ["PLI"]
    finally:
        await video.close()

    # ccm fir without nack pli: a FIR is the phone's only way to recover, loss too
    video, wire = _video_on_wire(pli=False)
    try:
        video._rtp_received(packet(1, 0, True, True), phone)
        video.request_keyframe()
        assert wire.feedback() == ["PLI", "FIR 1"]
    finally:
        await video.close()


async def test_keyframe_requests_from_the_phone_counted_once() -> None:
    """A phone's PLI and FIR in one compound packet (as we send them, as many phones do) are
    one request: the browser is asked once. A FIR repeated with the same sequence number is
    the same request still waiting for its keyframe (RFC 5104 4.3.1.2), not a new one. Before,
    each RTCP message counted and was forwarded."""
    video = RtpVideo("127.0.0.1")
    forwarded: list[bool] = []
    video.outgoing.keyframe_requested = lambda: forwarded.append(True)  # type: ignore[method-assign]
    phone, other = 0x1234, 0x5678
    addr = ("127.0.0.1", 40001)

    def receive(*packets: object) -> int:
        video._rtcp_received(b"".join(bytes(p) for p in packets), addr)  # type: ignore[call-overload]
        return video.keyframe_requests_received

    try:
        assert receive(RtcpRrPacket(phone), RtcpPliPacket(phone, video._ssrc),
                       RtcpFirPacket(phone, [(video._ssrc, 1)])) == 1  # fmt: skip
        for _ in range(3):  # repetitions of FIR 1
            assert receive(RtcpRrPacket(phone), RtcpFirPacket(phone, [(video._ssrc, 1)])) == 1
        assert receive(RtcpRrPacket(phone), RtcpFirPacket(phone, [(video._ssrc, 2)])) == 2
        # the same sequence number from another sender is its own request
        assert receive(RtcpRrPacket(other), RtcpFirPacket(other, [(video._ssrc, 2)])) == 3
        # a FIR for another stream, in the same message as one for us: not ours to count
        assert receive(RtcpFirPacket(phone, [(0x999, 3)])) == 3
        # a PLI: no sequence number, each is a request
        assert receive(RtcpRrPacket(phone), RtcpPliPacket(phone, video._ssrc)) == 4
        assert receive(RtcpRrPacket(phone), RtcpPliPacket(phone, video._ssrc)) == 5
        # along with a repeated FIR, a PLI still asks (once)
        assert (
            receive(RtcpPliPacket(phone, video._ssrc), RtcpFirPacket(phone, [(video._ssrc, 2)]))
            == 6
        )
        assert len(forwarded) == 6
        # RTCP naming ever new senders cannot grow what is remembered without bound
        for n in range(100):
            receive(RtcpFirPacket(0x10000 + n, [(video._ssrc, 1)]))
        assert len(video._fir_received) <= 16
    finally:
        await video.close()


@contextlib.asynccontextmanager
async def video_call(
    codec: str,
) -> AsyncIterator[tuple[Phone, RtpVideo, Browser, WebRtcLeg, VideoLink]]:
    """
    (phone, its RtpVideo at 300 kbit/s, browser, its WebRtcLeg, the link between
    the two legs): a video call in ``codec``, connected and linked.
    """
    phone = await Phone.open()
    video = await _negotiated_with(phone, (codec,), bitrate=300)
    browser = Browser(1000, (230, 20, 20), f"video/{codec}")
    leg = WebRtcLeg()
    link = None
    try:
        await browser.accept(await leg.accept_offer(await browser.offer()))
        await wait_for(lambda: leg.connection_state == "connected", 10)
        link = VideoLink(leg, video)
        yield phone, video, browser, leg, link
    finally:
        if link is not None:
            link.close()
        await leg.close()
        await browser.close()
        await video.close()
        phone.close()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_browser_and_phone_video_relayed_both_ways(codec: str) -> None:
    """aiortc browser <-> WebRtcLeg <-> VideoLink <-> RtpVideo <-> scripted phone, real codecs:
    the browser's frames reach the phone as RTP, the phone's frames are decoded by the browser."""
    async with video_call(codec) as (phone, video, browser, leg, link):
        assert leg.video_codec == video.video_codec == f"video/{codec}"
        assert link.forwarding
        # browser -> phone: RTP with our SSRC, markers closing frames
        await wait_for(lambda: sum(p.marker for p in phone.rtp) >= 20, 15)
        assert {p.payload_type for p in phone.rtp} == {100 if codec == "VP8" else 101}
        assert len({p.ssrc for p in phone.rtp}) == 1
        # phone -> browser: the phone packetizes its encoded frames with aiortc's packer
        assert phone.transport is not None
        camera = PhoneCamera(phone.transport, video.local_port, codec)
        sender = asyncio.ensure_future(camera.run())
        try:
            await wait_for(lambda: len(lit_frames(browser.frames)) >= 20, 20)
        finally:
            sender.cancel()
        assert dominant_channel(lit_frames(browser.frames)[-1]) == 1  # the phone's green bar
        assert video.frames_received >= 20 and video.frames_sent >= 20
        # the phone's b=AS (300 kbit/s) caps the browser's bitrate (REMB): aiortc's encoder
        # takes it (its H.264 encoder goes no lower than 500 kbit/s)
        assert leg.video is not None and leg.video.max_bitrate == 300_000
        encoder = browser.video_transceiver.sender._RTCRtpSender__encoder  # type: ignore[attr-defined]
        await wait_for(
            lambda: encoder.target_bitrate == (300_000 if codec == "VP8" else 500_000), 5
        )

        # RTCP: sender reports (we send) with a report block about the phone's stream
        def reports() -> list[RtcpSrPacket]:
            return [p for d in phone.rtcp for p in parse_rtcp(d) if isinstance(p, RtcpSrPacket)]

        await wait_for(lambda: any(r.reports for r in reports()), 5)
        assert reports()[-1].ssrc == video._ssrc and reports()[-1].reports[0].ssrc == 0x4321

        # keyframe requests through the whole path: the browser's PLI -> PLI to the phone
        await asyncio.sleep(0.4)  # past the rate limit of earlier requests
        count = sum(isinstance(p, RtcpPliPacket) for p in phone.feedback())
        receiver = browser.video_transceiver.receiver
        ssrc = next(s.source for s in receiver.getSynchronizationSources())
        await receiver._send_rtcp_pli(ssrc)
        await wait_for(
            lambda: sum(isinstance(p, RtcpPliPacket) for p in phone.feedback()) > count, 3
        )
        # ... and the phone's PLI -> a keyframe request at the browser's sender
        requests: list[int] = []
        browser_sender = browser.video_transceiver.sender
        original = browser_sender._send_keyframe

        def spy() -> None:
            requests.append(1)
            original()

        browser_sender._send_keyframe = spy  # type: ignore[method-assign]
        assert phone.rtcp_transport is not None
        phone.rtcp_transport.sendto(
            bytes(RtcpPliPacket(0x4321, video._ssrc)), ("127.0.0.1", video.local_port + 1)
        )
        await wait_for(lambda: len(requests) >= 1, 3)

        # statistics for call records: both streams counted both ways, keyframe requests
        # included (the browser's PLI above reached us; the phone's PLI went to the browser)
        phone_side = video.stats()
        assert phone_side.codec == codec
        assert phone_side.packets_sent >= 20 and phone_side.bytes_sent > 0
        assert phone_side.packets_received >= 20 and phone_side.bytes_received > 0
        assert phone_side.frames_sent >= 20 and phone_side.frames_received >= 20
        assert phone_side.keyframe_requests_sent >= 1
        assert phone_side.keyframe_requests_received == 1
        assert phone_side.packets_lost == 0 and phone_side.frames_lost == 0
        assert leg.video is not None
        browser_side = await leg.video.stats()
        assert browser_side.codec == codec
        assert browser_side.packets_sent >= 20 and browser_side.bytes_sent > 0
        assert browser_side.packets_received >= 20 and browser_side.bytes_received > 0
        assert browser_side.frames_sent >= 20 and browser_side.frames_received >= 20
        assert browser_side.keyframe_requests_received >= 1
        assert browser_side.keyframe_requests_sent >= 1
        assert browser_side.packets_lost == 0 and browser_side.jitter_ms is not None


class FrameTrack(MediaStreamTrack):
    """Encoded frames (av.Packet) of known content, 30 per second: a keyframe first."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    async def recv(self) -> av.Packet:  # type: ignore[override]
        await asyncio.sleep(1 / 30)
        n = len(self.sent)
        data = bytes([0x00 if n == 0 else 0x01]) + bytes((n + i) & 0xFF for i in range(2999))
        self.sent.append(data)
        packet = av.Packet(data)
        packet.pts = n * 3000
        packet.time_base = fractions.Fraction(1, 90000)
        return packet


async def test_srtp_video_between_two_legs() -> None:
    """SDES keys the video stream as the audio one; frames cross intact (several packets
    each), and an SRTP-only leg rejects a video offer without crypto."""
    a = await VideoRtpLeg.open("127.0.0.1", 30000, 30999, srtp="optional")
    b = await VideoRtpLeg.open("127.0.0.1", 30000, 30999, srtp="optional")
    strict = await VideoRtpLeg.open("127.0.0.1", 30000, 30999, srtp="mandatory")
    try:
        video_a, video_b = a.enable_video(("VP8",)), b.enable_video()
        offer = a.create_offer()
        assert offer.count(b"a=crypto:") == 2  # audio and video, each its own key
        a.apply_answer(b.create_answer(offer))
        assert video_a.srtp_suite == video_b.srtp_suite == "AES_CM_128_HMAC_SHA1_80"
        assert video_a.video_codec == video_b.video_codec == "video/VP8"
        received = video_b.subscribe_encoded()
        source = FrameTrack()
        video_a.set_video_source(source)
        got = [bytes(await asyncio.wait_for(received.recv(), 5)) for _ in range(10)]
        assert got == source.sent[:10]
        assert video_a.packets_sent >= 30  # 3000-byte frames: several packets each
        received.stop()

        # audio with crypto, video without: an SRTP-only leg takes the audio only
        strict.enable_video()
        offer_session = SessionDescription.parse(a.create_offer())
        video_offer = offer_session.media[1]
        video_offer.attributes = [x for x in video_offer.attributes if x[0] != "crypto"]
        answer = SessionDescription.parse(strict.create_answer(bytes(offer_session)))
        assert answer.media[0].port != 0
        assert answer.media[1].kind == "video" and answer.media[1].port == 0
    finally:
        for leg in (a, b, strict):
            await leg.close()


def broken_video(rng: random.Random, codec: str, seq: int, ts: int, ssrc: int) -> bytes:
    """
    A video packet a phone gone wrong may send at the place of its next one:
    a VP8 payload descriptor with any bits and extensions (RFC 7741), cut
    anywhere; an H.264 NAL unit of any type, STAP-A with lengths past the
    packet, FU-A with any start and end bits (RFC 6184), cut anywhere; any
    marker, sequence number or timestamp near its own, or none of its stream.
    """
    pt = 100 if codec == "VP8" else 101
    if codec == "VP8":
        head = bytes((rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    else:
        kind = rng.choice((1, 5, 7, 8, 24, 28, 29, rng.randrange(32)))
        head = bytes((0x60 | kind, rng.randrange(256)))
        if kind == 24:  # STAP-A: a length, maybe past the end
            head += rng.randrange(65536).to_bytes(2, "big") + bytes((0x65,))
    payload = head + rng.randbytes(rng.choice((0, 1, 5, 100, 1200)))
    payload = payload[: rng.randrange(len(payload) + 1)] if rng.random() < 0.3 else payload
    seq += rng.choice((0, 0, 1, -1, 50))
    ts += rng.choice((0, 0, 3000, -3000, 1 << 31))
    packet = RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload, rng.random() < 0.5)
    return bytes(packet)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_a_phone_sending_broken_video_leaves_the_call_whole(
    codec: str, caplog: pytest.LogCaptureFixture
) -> None:
    """
    A phone whose video stream has, among its real frames, 200 broken packets
    (broken_video) at the place of its next one: they are dropped or relayed
    and the frames they broke are lost, nothing is raised or logged with a
    traceback, and once the phone is itself again (its next keyframe) the
    browser decodes its frames again.
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    rng = random.Random(24)
    try:
        async with video_call(codec) as (phone, video, browser, _, _):
            await broken_among_frames(rng, codec, phone, video, browser)
        assert errors == [] and "Traceback" not in caplog.text, (errors, caplog.text)
    finally:
        loop.set_exception_handler(None)


async def broken_among_frames(
    rng: random.Random, codec: str, phone: Phone, video: RtpVideo, browser: Browser
) -> None:
    """The phone's frames with 200 broken packets among them; the browser's frames after."""
    broken = 0

    def extra(seq: int, timestamp: int) -> list[bytes]:
        nonlocal broken
        if not 10 <= camera.frames < 60 or broken >= 200:
            return []
        datagrams = [
            broken_video(rng, codec, seq, timestamp, 0x4321)
            for _ in range(rng.randrange(1, 5))
        ]
        broken += len(datagrams)
        return datagrams

    assert phone.transport is not None
    camera = PhoneCamera(phone.transport, video.local_port, codec, 15, extra)
    sender = asyncio.ensure_future(camera.run())
    try:
        await wait_for(lambda: camera.frames >= 60, 20)
        assert broken >= 100
        lit = len(lit_frames(browser.frames))
        await wait_for(lambda: len(lit_frames(browser.frames)) >= lit + 15, 20)
    finally:
        sender.cancel()
    assert dominant_channel(lit_frames(browser.frames)[-1]) == 1  # the phone's green bar
