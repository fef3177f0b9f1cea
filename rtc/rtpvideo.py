"""
Video toward a SIP video phone: one RTP stream (VP8, or H.264 in
packetization mode 1) on its own UDP socket pair, relayed without
transcoding to and from a WebRtcLeg's video (VideoLink links them).

``RtpVideo`` is the stream: its SDP m=video line (offer, answer, applying an
answer), symmetric RTP latching (strict, following a NAT rebinding as
RtpLeg does), SRTP by SDES when the audio of the call
uses it, RTCP (SR/RR + SDES every few seconds, BYE on close) and keyframe
requests both ways.

- From the phone: RTP packets are re-assembled into whole frames (marker
  bit, contiguous sequence numbers) and depacketized with aiortc's
  depayloaders; the frames go to ``subscribe_encoded()`` tracks (the
  webrtcvideo EncodedVideoTrack: starts at a keyframe, restarts at one after
  a loss), which a WebRtcLeg sends as they are. A lost packet drops the
  frame, sends a PLI to the phone and waits for the keyframe.
- Toward the phone: the frames of the source (``set_video_source()``, an
  EncodedVideoTrack of the WebRtcLeg's received video) are packetized with
  aiortc's VP8/H.264 packetizers (``pack``), marker on the last packet of a
  frame, under our SSRC, sequence numbers and timestamps.
- Keyframe requests: a PLI or FIR from the phone asks the source (the
  browser) for a keyframe, once per RTCP compound packet, a FIR repeated with
  the same sequence number (RFC 5104 4.3.1.2) not again. Toward the phone,
  picture loss (ours, or the browser's forwarded) is a PLI; a new receiver
  of its video (a subscriber, the browser switched to it as its source) also
  gets a FIR when the phone negotiated ``ccm fir``: RFC 5104 4.3.1.2 keeps
  FIR for a decoder refresh without which the video would be unusable, never
  for loss. Requests to the phone are rate limited.
- Bitrate: our m=video carries ``b=AS`` (``bitrate_kbps``, the gateway's
  ``[media] video_bit_rate``): the most we want from the phone. What we
  send the phone is the browser's video as it is, so ``max_bitrate``
  (bits/s) is the lower of the phone's ``b=AS``/``b=TIAS`` and our own,
  and VideoLink passes it to the browser's sender (REMB) since we do not
  encode.

H.264 (RFC 6184): only packetization-mode=1 is offered and accepted (the
packetizer makes FU-A/STAP-A); a profile-level-id is accepted when it is
Baseline or decodable as Constrained Baseline (what browsers send), and the
answer repeats the offer's profile-level-id. Answering, we take VP8 when
it is offered (every browser has it), else H.264.

``VideoRtpLeg`` is an RtpLeg (audio) that also carries this stream: once
``enable_video()`` opened it, its offers add an m=video line and its answers
accept an offered one (port 0 when nothing is shared, RFC 3264 section 6).
Without ``enable_video()`` it behaves exactly as an RtpLeg.
"""

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.codecs.h264 import H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from .latch import SourceLatch
from .rtcp import RtcpFirPacket, RtcpPliPacket, parse_rtcp
from .rtcplink import RtcpLink, sdp_remote
from .rtcpsession import RtcpSession
from .rtp import RtpPacket, is_rtcp, seq_diff
from .rtpleg import RtpLeg, attach_rtp_pair, bind_rtp_pair
from .sdes import (
    DEFAULT_SUITE,
    CryptoAttribute,
    SrtpContext,
    SrtpError,
    find_crypto,
    generate_key,
    negotiated_context,
)
from .sdp import (
    Codec,
    MediaDescription,
    SdpError,
    SessionDescription,
    answer_direction,
    combine_directions,
    reverse_direction,
)
from .stats import VideoStats
from .webrtcvideo import EncodedVideoPublisher, OutgoingVideoTrack

__all__ = [
    "VIDEO_CODECS",
    "FrameAssembler",
    "RtpVideo",
    "VideoRtpLeg",
    "bandwidth_limit",
    "h264_profile_supported",
    "sdp_video_codecs",
]

logger = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
VIDEO_CODECS = ("VP8", "H264")
VP8_PT = 96
H264_PT = 97
H264_PROFILE_LEVEL_ID = "42e01f"  # Constrained Baseline 3.1, what browsers send
DEFAULT_BITRATE_KBPS = 2000
SECURE_PROTOS = ("RTP/SAVP", "RTP/SAVPF")
# frames waiting for missing packets before the oldest is given up as lost
MAX_PENDING_FRAMES = 3
# most one frame may hold while it waits (packets, payload bytes), beyond which it is given
# up as lost: a peer never closing a frame (no marker) would otherwise grow it for ever, and
# every packet costs more the more are held. A 1080p H.264 keyframe is a few hundred packets
# of ~1200 bytes; these leave several times that.
MAX_FRAME_PACKETS = 1000
MAX_FRAME_BYTES = 2_000_000
# sequence numbers of padding-only packets remembered ahead of the next one expected (a
# burst of bandwidth probes arriving before the packets they follow); beyond this the
# oldest are forgotten, at worst costing a frame as a loss would
MAX_PADDING_SEQS = 256
# at most one keyframe request to the phone per this many seconds
KEYFRAME_REQUEST_INTERVAL = 0.3
# senders of FIR whose last command sequence number is remembered (RTCP from anywhere may
# name a new one: the oldest is forgotten)
MAX_FIR_SENDERS = 16
# RTCP reports on the video stream (randomised 0.5..1.5 times this)
RTCP_INTERVAL = 2.0


def _parse_fmtp(fmtp: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in (fmtp or "").split(";"):
        name, sep, value = item.strip().partition("=")
        if name:
            params[name.lower()] = value.strip() if sep else ""
    return params


def h264_profile_supported(profile_level_id: str) -> bool:
    """
    Whether a profile-level-id (RFC 6184 8.1) is Baseline, or decodable as
    Constrained Baseline (profile_idc 66 with constraint_set1, 77 with
    constraint_set0, 88 with both): what browsers send and decode.
    """
    try:
        value = int(profile_level_id, 16)
    except ValueError:
        return False
    if len(profile_level_id) != 6:
        return False
    idc, iop = value >> 16, (value >> 8) & 0xFF
    if idc == 0x42:
        return True
    if idc == 0x4D:
        return bool(iop & 0x80)
    if idc == 0x58:
        return iop & 0xC0 == 0xC0
    return False


def _codec_usable(codec: Codec) -> bool:
    if codec.clock_rate != VIDEO_CLOCK:
        return False
    name = codec.name.upper()
    if name == "VP8":
        return True
    if name == "H264":
        params = _parse_fmtp(codec.fmtp)
        if params.get("packetization-mode", "0") != "1":
            return False
        return h264_profile_supported(params.get("profile-level-id", "420010"))
    return False


def sdp_video_codecs(media: MediaDescription, wanted: Sequence[str] = VIDEO_CODECS) -> list[Codec]:
    """The codecs of an m=video line we can relay, in its order, restricted to ``wanted``."""
    names = {n.upper() for n in wanted}
    return [c for c in media.codecs if c.name.upper() in names and _codec_usable(c)]


def bandwidth_limit(session: SessionDescription, media: MediaDescription) -> int | None:
    """The peer's receive limit in bits/s from b=AS (kbit/s) / b=TIAS (bit/s), if any."""
    limits = []
    for line in media.bandwidth or session.bandwidth:
        kind, _, value = line.partition(":")
        try:
            number = int(value.strip())
        except ValueError:
            continue
        if kind.upper() == "AS" and number > 0:
            limits.append(number * 1000)
        elif kind.upper() == "TIAS" and number > 0:
            limits.append(number)
    return min(limits) if limits else None


def _feedback(media: MediaDescription, payload_type: int) -> set[str]:
    """The rtcp-fb values (RFC 4585 4.2) for a payload type ('nack pli', 'ccm fir'...)."""
    result = set()
    for name, value in media.attributes:
        if name != "rtcp-fb" or not value:
            continue
        pt, _, rest = value.partition(" ")
        if pt == "*" or pt == str(payload_type):
            result.add(" ".join(rest.split()).lower())
    return result


def _is_frame_start(name: str, payload: bytes) -> bool:
    """Whether an RTP payload begins a frame (VP8 S bit on partition 0, H.264 NAL start)."""
    if not payload:
        return False
    if name == "VP8":
        return payload[0] & 0x10 != 0 and payload[0] & 0x07 == 0
    nal_type = payload[0] & 0x1F
    if nal_type == 28:  # FU-A
        return len(payload) > 1 and payload[1] & 0x80 != 0
    return 1 <= nal_type <= 24


class _PendingFrame:
    """The packets of one timestamp so far, with what ``FrameAssembler`` asks of them kept
    up to date as they arrive (no scan of them all per packet)."""

    __slots__ = ("first", "marker", "packets", "size")

    def __init__(self, first: int) -> None:
        self.packets: dict[int, RtpPacket] = {}
        self.first = first  # earliest sequence number held
        self.size = 0  # payload bytes held
        self.marker = False  # whether a packet with the marker bit came (it may close the frame)

    def add(self, packet: RtpPacket) -> None:
        seq = packet.sequence_number
        if seq_diff(seq, self.first) < 0:
            self.first = seq
        duplicate = self.packets.get(seq)
        if duplicate is not None:
            self.size -= len(duplicate.payload)
        self.packets[seq] = packet
        self.size += len(packet.payload)
        self.marker = self.marker or packet.marker


class FrameAssembler:
    """
    RTP packets of one video stream -> whole encoded frames, in order. A frame
    is complete when the packets from its first to the one with the marker bit
    are all there and it follows the previous frame without a gap; a frame
    still incomplete when ``MAX_PENDING_FRAMES`` newer ones are waiting, or
    holding more than ``MAX_FRAME_PACKETS``/``MAX_FRAME_BYTES``, is lost
    (``add`` reports it) and the stream resumes at the next frame start.

    A packet with no payload (padding only, RFC 3550 5.1: libwebrtc-based
    senders probe bandwidth with them, between frames) belongs to no frame:
    it only fills its place in the sequence numbers, so that the frame after
    it still follows without a gap, whichever of the two arrives first.
    """

    def __init__(self, name: str) -> None:
        self.name = name.upper()
        self._depayload: Callable[[bytes], bytes] = (
            vp8_depayload if self.name == "VP8" else h264_depayload
        )
        self._pending: dict[int, _PendingFrame] = {}
        self._next_seq: int | None = None
        # padding-only packets not yet reached by _next_seq (they came ahead of a gap)
        self._padding: set[int] = set()
        self._ssrc: int | None = None
        self.frames = 0
        self.lost = 0

    def add(self, packet: RtpPacket) -> tuple[list[JitterFrame], bool]:
        """Returns the frames completed by ``packet`` and whether a frame was lost."""
        if packet.ssrc != self._ssrc:
            self._pending.clear()
            self._padding.clear()
            self._next_seq = None
            self._ssrc = packet.ssrc
        if self._next_seq is not None and seq_diff(packet.sequence_number, self._next_seq) < 0:
            return [], False  # late or duplicate: its frame is gone already
        if not packet.payload:
            # padding only: no frame of its own (one would never complete, hold up every
            # frame after it and be given up as lost, costing a keyframe request and the
            # frames behind it); it only takes its sequence number out of the way
            self._add_padding(packet.sequence_number)
            return self._drain(packet.sequence_number, [], False)
        pending = self._pending.get(packet.timestamp)
        if pending is None:
            pending = self._pending[packet.timestamp] = _PendingFrame(packet.sequence_number)
        pending.add(packet)
        frames: list[JitterFrame] = []
        lost = False
        if len(pending.packets) > MAX_FRAME_PACKETS or pending.size > MAX_FRAME_BYTES:
            # no real frame is that big: lost, as one missing a packet (the leg asks for a keyframe)
            logger.debug(
                "%s frame given up at %d packets, %d bytes",
                self.name,
                len(pending.packets),
                pending.size,
            )
            del self._pending[packet.timestamp]
            self._next_seq = None
            self.lost += 1
            lost = True
        return self._drain(packet.sequence_number, frames, lost)

    def _drain(
        self, reference: int, frames: list[JitterFrame], lost: bool
    ) -> tuple[list[JitterFrame], bool]:
        """Hand out the frames now complete, oldest first (their age taken relative to the
        sequence number ``reference``), giving up the oldest while too many wait."""
        while self._pending:
            timestamp = min(
                self._pending, key=lambda ts: seq_diff(self._pending[ts].first, reference)
            )
            frame = self._complete(timestamp)
            if frame is not None:
                frames.append(frame)
                continue
            if timestamp not in self._pending:  # taken but undecodable
                lost = True
                continue
            if len(self._pending) > MAX_PENDING_FRAMES:
                del self._pending[timestamp]
                self._next_seq = None
                self.lost += 1
                lost = True
                continue
            break
        return frames, lost

    def _complete(self, timestamp: int) -> JitterFrame | None:
        pending = self._pending[timestamp]
        if not pending.marker:
            return None  # nothing can close it yet: no walk through its packets
        packets, first = pending.packets, pending.first
        if self._next_seq is None:
            if not _is_frame_start(self.name, packets[first].payload):
                return None
        elif first != self._next_seq:
            return None
        ordered = []
        seq = first
        while True:
            packet = packets.get(seq)
            if packet is not None:
                ordered.append(packet)
                if packet.marker:
                    break
            elif seq not in self._padding:  # padding inside a frame is only skipped
                return None
            seq = (seq + 1) & 0xFFFF
        del self._pending[timestamp]
        self._advance((seq + 1) & 0xFFFF)
        try:
            data = b"".join(self._depayload(p.payload) for p in ordered)
        except ValueError as exc:
            logger.debug("undecodable %s frame: %s", self.name, exc)
            self._next_seq = None
            self.lost += 1
            return None
        self.frames += 1
        return JitterFrame(data, timestamp)

    def _add_padding(self, seq: int) -> None:
        if seq == self._next_seq:
            self._advance((seq + 1) & 0xFFFF)
            return
        # ahead of a gap (or while resuming after a loss): skipped once the stream gets there
        self._padding.add(seq)
        if len(self._padding) > MAX_PADDING_SEQS:
            # forget the oldest (farthest behind this one): a burst of probes is recent
            oldest = sorted(self._padding, key=lambda s: seq_diff(s, seq))
            self._padding.difference_update(oldest[: len(oldest) - MAX_PADDING_SEQS // 2])

    def _advance(self, next_seq: int) -> None:
        """The stream goes on at ``next_seq``, past any padding already there."""
        padding = self._padding
        while next_seq in padding:
            padding.discard(next_seq)
            next_seq = (next_seq + 1) & 0xFFFF
        self._next_seq = next_seq
        if padding:
            # those now behind (of a frame given up, or from before a resume) go: kept, one
            # would pass for a missing packet once the sequence numbers wrap around
            self._padding = {s for s in padding if seq_diff(s, next_seq) > 0}


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, video: "RtpVideo", rtcp: bool) -> None:
        self._video = video
        self._rtcp = rtcp

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._rtcp or is_rtcp(data):
            self._video._rtcp_received(data, addr, muxed=not self._rtcp)
        else:
            self._video._rtp_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("video RTP socket error: %s", exc)


class RtpVideo(EncodedVideoPublisher):
    """
    One video RTP stream toward a SIP phone (see the module docstring). The
    VideoLink side of it: ``has_video``, ``video_codec``, ``subscribe_encoded()``,
    ``set_video_source()``, ``add_video_listener()``, ``max_bitrate``.
    """

    def __init__(
        self,
        host: str,
        advertised_address: str | None = None,
        srtp: str = "off",
        codecs: Sequence[str] = VIDEO_CODECS,
        bitrate_kbps: int = DEFAULT_BITRATE_KBPS,
    ) -> None:
        wanted = [c.upper() for c in codecs if c.upper() in VIDEO_CODECS]
        if not wanted:
            raise ValueError(f"No video codec among {codecs!r} (supported: {VIDEO_CODECS})")
        super().__init__()
        self.host = host
        self.advertised_address = advertised_address or host
        self.srtp = srtp
        self.codecs = tuple(wanted)
        self.bitrate_kbps = bitrate_kbps
        self.local_port = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.frames_received = 0
        self.frames_sent = 0
        self.keyframe_requests_sent = 0
        self.keyframe_requests_received = 0
        # what the browser may send us for the phone (bits/s): see the module docstring
        self.max_bitrate: int | None = None
        self.remote_bitrate: int | None = None  # the phone's b=AS/TIAS (bits/s), if any
        # the last codec negotiated, kept after video ends: the call record names it
        self.last_codec: str | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._attaching: asyncio.Future[None] | None = None  # bind(): sockets to the loop
        self._closed = False

        # negotiation
        self._codec: Codec | None = None
        self._pending_codecs: dict[int, Codec] = {}  # offered, before the answer
        self._offered = False
        self._offered_direction = "sendrecv"
        self._direction: str | None = None
        self._proto = "RTP/AVP"
        self._offered_proto = "RTP/AVP"
        self._fir = False
        self._fir_only = False
        self._fir_sequence = 0
        self._sdp_remote: tuple[str, int] | None = None
        self._srtp_key = generate_key() if srtp != "off" else b""
        self._srtp: SrtpContext | None = None
        self._offered_crypto: list[CryptoAttribute] = []
        self._crypto_tag = 1
        self._awaiting_srtp = False
        self._listeners: list[Callable[[], None]] = []

        # receiving
        self._assembler: FrameAssembler | None = None
        self._remote_ssrc: int | None = None
        self._last_keyframe_request: float | None = None
        # the last FIR command sequence number per sender SSRC: a repetition is no new request
        self._fir_received: dict[int, int] = {}

        # sending
        self._ssrc = random.getrandbits(32)
        self._sequence_number = random.getrandbits(16)
        self._timestamp_base = random.getrandbits(32)
        self._last_timestamp = self._timestamp_base
        self._last_sent_at: float | None = None
        self.outgoing = OutgoingVideoTrack()
        self._packer: Vp8Encoder | H264Encoder | None = None
        self._sender: asyncio.Task[None] | None = None

        self._rtcp = RtcpSession(self._ssrc, VIDEO_CLOCK, f"{self._ssrc:08x}@{host}")
        self._rtcp_link = RtcpLink(self._rtcp)
        self._source = SourceLatch(self._rtcp.receiver, self._rtcp_link)
        self._rtcp_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        host: str = "127.0.0.1",
        port_min: int = 10000,
        port_max: int = 20000,
        **options: Any,
    ) -> "RtpVideo":
        """Bind an even RTP port in [port_min, port_max] and the RTCP port above it."""
        video = cls.bind(host, port_min, port_max, **options)
        assert video._attaching is not None
        await video._attaching
        return video

    @classmethod
    def bind(
        cls,
        host: str = "127.0.0.1",
        port_min: int = 10000,
        port_max: int = 20000,
        **options: Any,
    ) -> "RtpVideo":
        """
        As ``open()``, without waiting: the sockets are bound at once, so
        ``local_port`` can go into an SDP answer given synchronously (a
        phone's re-INVITE adding video), and are handed to the event loop in
        a task; what arrives meanwhile waits in the socket.
        """
        sockets = bind_rtp_pair(host, port_min, port_max)
        video = cls(host, **options)
        video.local_port = sockets[0].getsockname()[1]
        video._attaching = asyncio.ensure_future(video._attach(sockets))
        return video

    async def _attach(self, sockets: tuple[socket.socket, socket.socket]) -> None:
        transport, rtcp_transport = await attach_rtp_pair(
            sockets, _Protocol(self, False), _Protocol(self, True)
        )
        if self._closed:
            transport.close()
            rtcp_transport.close()
            return
        self._transport = transport
        self._rtcp_transport = rtcp_transport

    # state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_video(self) -> bool:
        """True while video is negotiated with the phone (a codec, port not 0)."""
        return self._codec is not None and not self._closed

    @property
    def codec(self) -> str | None:
        """Name of the negotiated codec ("VP8", "H264"), None without video."""
        return self._codec.name.upper() if self.has_video and self._codec else None

    @property
    def video_codec(self) -> str | None:
        """MIME type of the negotiated codec (as WebRtcLeg.video_codec)."""
        codec = self.codec
        return f"video/{codec}" if codec else None

    receive_codec = video_codec

    @property
    def direction(self) -> str | None:
        return self._direction if self.has_video else None

    @property
    def remote_address(self) -> tuple[str, int] | None:
        return self._source.address or self._sdp_remote

    @property
    def srtp_suite(self) -> str | None:
        return self._srtp.suite if self._srtp else None

    @property
    def sending(self) -> bool:
        return self.has_video and self._direction in ("sendrecv", "sendonly")

    @property
    def receiving(self) -> bool:
        return self.has_video and self._direction in ("sendrecv", "recvonly")

    def add_video_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each negotiation and on close."""
        self._listeners.append(listener)

    def remove_video_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                logger.exception("video listener failed")

    # SDP

    def _codec_media(self, proto: str, codecs: list[Codec], direction: str) -> MediaDescription:
        media = MediaDescription("video", self.local_port, proto)
        media.bandwidth.append(f"AS:{self.bitrate_kbps}")
        for codec in codecs:
            media.add_codec(codec)
        for codec in codecs:
            media.attributes.append(("rtcp-fb", f"{codec.payload_type} nack pli"))
            media.attributes.append(("rtcp-fb", f"{codec.payload_type} ccm fir"))
        media.direction = direction
        return media

    def offer_media(self, direction: str = "sendrecv") -> MediaDescription:
        """Our m=video for an offer: the codecs we relay, or the negotiated one on re-offers."""
        if self._codec is not None:
            proto = self._proto
            codecs = [self._codec]
            crypto = (
                [CryptoAttribute(self._crypto_tag, self._srtp.suite, self._srtp_key)]
                if self._srtp is not None
                else []
            )
        else:
            proto = "RTP/SAVP" if self.srtp == "mandatory" else "RTP/AVP"
            codecs = []
            for name in self.codecs:
                if name == "VP8":
                    codecs.append(Codec(VP8_PT, "VP8", VIDEO_CLOCK))
                else:
                    codecs.append(
                        Codec(
                            H264_PT,
                            "H264",
                            VIDEO_CLOCK,
                            fmtp=f"profile-level-id={H264_PROFILE_LEVEL_ID};"
                            "packetization-mode=1;level-asymmetry-allowed=1",
                        )
                    )
            crypto = (
                [CryptoAttribute(1, DEFAULT_SUITE, self._srtp_key)] if self.srtp != "off" else []
            )
            self._awaiting_srtp = bool(crypto)
            self._pending_codecs = {c.payload_type: c for c in codecs}
        media = self._codec_media(proto, codecs, direction)
        for line in crypto:
            media.attributes.append(("crypto", str(line)))
        self._offered_crypto = crypto
        self._offered_proto = proto
        self._offered_direction = direction
        self._offered = True
        return media

    def apply_answer(self, session: SessionDescription, media: MediaDescription | None) -> None:
        """The answer's m=video to our offer (None or port 0: no video)."""
        if not self._offered:
            return
        self._offered = False
        if media is None or media.port == 0 or media.kind != "video":
            self._disable()
            return
        offered = self._pending_codecs or ({} if self._codec is None else {0: self._codec})
        chosen = None
        for codec in sdp_video_codecs(media, self.codecs):
            for mine in offered.values():
                if mine.name.upper() == codec.name.upper():
                    chosen = codec
                    break
            if chosen is not None:
                break
        if chosen is None:
            logger.info("video answer has no codec we offered: no video")
            self._disable()
            return
        crypto = None
        for answered in find_crypto(media.attributes):
            for ours in self._offered_crypto:
                if answered.tag == ours.tag and answered.suite == ours.suite:
                    crypto = answered
        if crypto is None and (
            (self.srtp == "mandatory" and self._offered_crypto)
            or media.proto.upper() in SECURE_PROTOS
        ):
            logger.info("video answer without a usable a=crypto line: no video")
            self._disable()
            return
        direction = combine_directions(
            self._offered_direction, reverse_direction(session.media_direction(media))
        )
        self._proto = self._offered_proto
        self._negotiated(session, media, chosen, crypto, direction)

    def answer_media(
        self, session: SessionDescription, offered: MediaDescription, direction: str = "sendrecv"
    ) -> MediaDescription | None:
        """
        Answer an offered m=video: our line, or None when we cannot take it
        (then the caller rejects it with port 0).
        """
        codecs = sdp_video_codecs(offered, self.codecs)
        # ours first (VP8: every browser has it), the offer's order among the rest
        codecs.sort(key=lambda c: self.codecs.index(c.name.upper()))
        if self._codec is not None:
            # keep the running codec if it is still offered
            same = [c for c in codecs if c.name.upper() == self.codec]
            codecs = same or codecs
        if not codecs or offered.port == 0:
            self._disable()
            return None
        secure = offered.proto.upper() in SECURE_PROTOS
        usable = find_crypto(offered.attributes) if self.srtp != "off" else []
        crypto = usable[0] if usable else None
        if crypto is None and (secure or self.srtp == "mandatory"):
            logger.info("video offer: SRTP cannot be agreed: video rejected")
            self._disable()
            return None
        codec = codecs[0]
        answered = Codec(codec.payload_type, codec.name, codec.clock_rate, fmtp=None)
        if codec.name.upper() == "H264":
            params = _parse_fmtp(codec.fmtp)
            profile = params.get("profile-level-id", "420010")
            fmtp = f"profile-level-id={profile};packetization-mode=1"
            if "level-asymmetry-allowed" in params:
                fmtp += f";level-asymmetry-allowed={params['level-asymmetry-allowed']}"
            answered.fmtp = fmtp
        ours = combine_directions(direction, answer_direction(session.media_direction(offered)))
        media = self._codec_media(offered.proto, [answered], ours)
        if crypto is not None:
            media.attributes.append(
                ("crypto", str(CryptoAttribute(crypto.tag, crypto.suite, self._srtp_key)))
            )
        self._offered = False
        self._offered_crypto = []
        self._proto = offered.proto
        self._negotiated(session, offered, codec, crypto, ours)
        return media

    def _negotiated(
        self,
        session: SessionDescription,
        media: MediaDescription,
        codec: Codec,
        crypto: CryptoAttribute | None,
        direction: str,
    ) -> None:
        changed = self._codec is None or self._codec.name.upper() != codec.name.upper()
        self._codec = codec
        self.last_codec = codec.name.upper()
        self._pending_codecs = {}
        self._direction = direction
        feedback = _feedback(media, codec.payload_type)
        self._fir = "ccm fir" in feedback
        # a phone that negotiated FIR but not PLI only recovers by FIR: it gets
        # one for picture loss too (libwebrtc's fallback); otherwise RFC 5104
        # 4.3.1.2 leaves loss to PLI
        self._fir_only = self._fir and "nack pli" not in feedback
        self.remote_bitrate = bandwidth_limit(session, media)
        # our own b=AS caps it too: the phone gets what the browser sends, and that is not
        # to exceed what we ourselves announced we would handle
        ours = self.bitrate_kbps * 1000
        self.max_bitrate = ours if self.remote_bitrate is None else min(self.remote_bitrate, ours)
        # SRTP
        self._awaiting_srtp = False
        self._srtp = negotiated_context(self._srtp, self._srtp_key, crypto)
        if crypto is not None:
            self._crypto_tag = crypto.tag
        # where to
        address = session.media_connection(media)
        if address is None:
            raise SdpError("SDP has no connection address for video")
        remote, rtcp_remote = sdp_remote(address, media, mux=True, ipv6=":" in self.host)
        if self._rtcp_link.set_remote(remote, rtcp_remote):
            self._source.reset()
        self._sdp_remote = remote
        if changed or self._assembler is None:
            self._assembler = FrameAssembler(codec.name)
            self._packer = Vp8Encoder() if codec.name.upper() == "VP8" else H264Encoder()
        self._start()
        logger.info(
            "video %s %s with %s (bitrate limit %s)",
            codec.name,
            direction,
            remote,
            self.max_bitrate,
        )
        self._changed()

    def _disable(self) -> None:
        was = self._codec is not None
        self._codec = None
        self._pending_codecs = {}
        self._awaiting_srtp = False
        self._offered = False
        if was:
            logger.info("video off")
        self._changed()

    # received video

    def subscribe_decoded(self) -> MediaStreamTrack | None:
        """No decoding here (the gateway relays video without transcoding)."""
        return None

    def request_keyframe(self, refresh: bool = False) -> None:
        """
        A PLI to the phone, at most one request per interval. ``refresh``: a
        new receiver needs a decoder refresh point (RFC 5104 3.5.1), so a FIR
        too when the phone negotiated ``ccm fir``; not for picture loss,
        which RFC 5104 4.3.1.2 leaves to PLI, unless the phone negotiated
        FIR but not PLI (then a FIR is its only way to recover).
        """
        if not self.has_video or self._remote_ssrc is None:
            return
        now = asyncio.get_running_loop().time()
        if (
            self._last_keyframe_request is not None
            and now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL
        ):
            return
        self._last_keyframe_request = now
        feedback = bytes(RtcpPliPacket(self._ssrc, self._remote_ssrc))
        if self._fir and (refresh or self._fir_only):
            self._fir_sequence = (self._fir_sequence + 1) & 0xFF
            feedback += bytes(RtcpFirPacket(self._ssrc, [(self._remote_ssrc, self._fir_sequence)]))
        self.keyframe_requests_sent += 1
        self._send_rtcp(extra=feedback)

    def _rtp_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed or self._codec is None or self._awaiting_srtp:
            return
        source = self._source
        latched = source.address
        stranger = latched is not None and addr != latched
        if stranger and not source.may_continue(data):
            return  # not our peer: strict once latched, as RtpLeg
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect(data)
            except SrtpError:
                return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        if packet.payload_type != self._codec.payload_type:
            return
        if stranger:
            if not source.moved(addr, packet.sequence_number):
                return
            logger.info("video RTP source moved from %s to %s (NAT rebinding)", latched, addr)
        elif latched is None:
            source.latch(addr)  # symmetric RTP (RFC 4961)
        self.packets_received += 1
        first = self._remote_ssrc is None
        self._remote_ssrc = packet.ssrc
        # not loop.time(): whole milliseconds on uvloop, too coarse for RFC 3550 jitter
        self._rtcp.rtp_received(
            packet.ssrc,
            packet.sequence_number,
            packet.timestamp,
            time.monotonic(),
            len(packet.payload),
        )
        if not self.receiving or self._assembler is None:
            return
        if first and self._subscribers:
            # the subscribers' own requests came before the phone's SSRC was known: new
            # receivers, a decoder refresh
            self.request_keyframe(refresh=True)
        frames, lost = self._assembler.add(packet)
        if lost:
            for track in self._subscribers:
                track.waiting_keyframe = True
            self.request_keyframe()
        mime = f"video/{self._assembler.name}"
        for frame in frames:
            self.frames_received += 1
            for track in list(self._subscribers):
                track._push(mime, frame)

    def _rtcp_received(self, data: bytes, addr: tuple[str, int], muxed: bool = False) -> None:
        if self._closed or self._awaiting_srtp:
            return
        loop = asyncio.get_running_loop()
        plain = self._rtcp_link.receive(data, addr, muxed, self._srtp, time.time(), loop.time())
        if plain is None:
            return
        try:
            packets = parse_rtcp(plain)
        except (ValueError, IndexError):
            return
        # one request per compound packet: a PLI and a FIR together (as we send them, and
        # many phones) ask for one keyframe
        wanted = False
        for packet in packets:
            if isinstance(packet, RtcpPliPacket) and packet.media_ssrc in (self._ssrc, 0):
                wanted = True
            elif isinstance(packet, RtcpFirPacket):
                for ssrc, sequence in packet.entries:
                    if ssrc == self._ssrc and self._new_fir(packet.ssrc, sequence):
                        wanted = True
        if wanted:
            self._keyframe_wanted()

    def _new_fir(self, sender: int, sequence: int) -> bool:
        """Whether a FIR for us is a new command: a sender repeats one, until the keyframe
        comes, with the same sequence number (RFC 5104 4.3.1.2)."""
        if self._fir_received.get(sender) == sequence:
            return False
        self._fir_received.pop(sender, None)
        if len(self._fir_received) >= MAX_FIR_SENDERS:
            del self._fir_received[next(iter(self._fir_received))]
        self._fir_received[sender] = sequence
        return True

    def _keyframe_wanted(self) -> None:
        """The phone lost picture: ask whoever makes our video (the browser) for a keyframe."""
        self.keyframe_requests_received += 1
        self.outgoing.keyframe_requested()

    # sending

    def set_video_source(self, track: MediaStreamTrack | None) -> None:
        """
        What we send to the phone: a track of encoded frames (an
        EncodedVideoTrack in the negotiated codec); None sends nothing.
        """
        self.outgoing.set_source(track)

    @property
    def video_source(self) -> MediaStreamTrack | None:
        return self.outgoing.source

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sender is None:
            self._sender = loop.create_task(self._run_sender())
        if self._rtcp_task is None:
            self._rtcp_task = loop.create_task(self._run_rtcp())

    async def _run_sender(self) -> None:
        while not self._closed:
            try:
                packet = await self.outgoing.recv()
            except MediaStreamError:
                return
            if not isinstance(packet, av.Packet):
                continue  # pictures: we do not encode
            if not self.sending or self._packer is None or self._codec is None:
                continue
            try:
                payloads, timestamp = self._packer.pack(packet)
            except Exception:  # a frame the packetizer cannot cut: skip it
                logger.debug("video frame not packetized", exc_info=True)
                continue
            self._send_frame(payloads, (self._timestamp_base + timestamp) & 0xFFFFFFFF)

    def _send_frame(self, payloads: list[bytes], timestamp: int) -> None:
        addr = self.remote_address
        if addr is None or self._transport is None or self._codec is None:
            return
        for i, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=self._codec.payload_type,
                sequence_number=self._sequence_number,
                timestamp=timestamp,
                ssrc=self._ssrc,
                payload=payload,
                marker=i == len(payloads) - 1,
            )
            self._sequence_number = (self._sequence_number + 1) & 0xFFFF
            data = bytes(packet)
            if self._srtp is not None:
                data = self._srtp.protect(data)
            self._transport.sendto(data, addr)
            self.packets_sent += 1
            self._rtcp.rtp_sent(len(payload))
        self.frames_sent += 1
        self._last_timestamp = timestamp
        self._last_sent_at = asyncio.get_running_loop().time()

    # RTCP

    def _send_rtcp(self, bye: bool = False, extra: bytes = b"") -> None:
        now = asyncio.get_running_loop().time()
        rtp_timestamp = self._last_timestamp
        if self._last_sent_at is not None:
            rtp_timestamp += int((now - self._last_sent_at) * VIDEO_CLOCK)
        self._rtcp_link.send(
            self._rtcp_transport, self._srtp, time.time(), now, rtp_timestamp, bye=bye, extra=extra
        )

    async def _run_rtcp(self) -> None:
        await asyncio.sleep(RTCP_INTERVAL * random.uniform(0.25, 0.75))
        while not self._closed:
            if self.has_video:
                self._send_rtcp()
            await asyncio.sleep(RTCP_INTERVAL * random.uniform(0.5, 1.5))

    def stats(self) -> VideoStats:
        """What this stream counted (its codec: the last one negotiated, None if never)."""
        rtcp = self._rtcp.stats(self.last_codec)
        return VideoStats(
            codec=self.last_codec,
            packets_sent=rtcp.packets_sent,
            bytes_sent=rtcp.bytes_sent,
            packets_received=rtcp.packets_received,
            bytes_received=rtcp.bytes_received,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            frames_lost=self._assembler.lost if self._assembler is not None else None,
            keyframe_requests_sent=self.keyframe_requests_sent,
            keyframe_requests_received=self.keyframe_requests_received,
            packets_lost=rtcp.packets_lost if rtcp.packets_received else None,
            jitter_ms=rtcp.jitter_ms if rtcp.packets_received else None,
            remote_packets_lost=rtcp.remote_packets_lost,
            remote_fraction_lost=rtcp.remote_fraction_lost,
            rtt_ms=rtcp.rtt_ms,
        )

    async def close(self) -> None:
        if self._closed:
            return
        if self.has_video:
            self._send_rtcp(bye=True)
        self._closed = True
        self._end_subscribers()
        self.outgoing.stop()
        for task in (self._sender, self._rtcp_task):
            if task is not None:
                task.cancel()
        for task in (self._sender, self._rtcp_task):
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._sender = self._rtcp_task = None
        attaching = self._attaching
        if attaching is not None and not attaching.done():
            try:
                await attaching  # closes what it attached, since we are closed
            except (OSError, asyncio.CancelledError):
                pass
        for transport in (self._transport, self._rtcp_transport):
            if transport is not None:
                transport.close()
        self._changed()
        self._listeners.clear()


async def _close(video: RtpVideo | None) -> None:
    if video is not None:
        await video.close()


class VideoRtpLeg(RtpLeg):
    """
    An RtpLeg whose SDP also carries a video stream once ``enable_video()``
    opened one (see the module docstring); ``video`` is that stream.
    """

    video: RtpVideo | None = None
    _video_ports: tuple[int, int] = (10000, 20000)
    _video_index: int | None = None  # position of m=video in our last offer

    @classmethod
    async def open(  # type: ignore[override]
        cls, host: str = "127.0.0.1", port_min: int = 10000, port_max: int = 20000, **kwargs: Any
    ) -> "VideoRtpLeg":
        leg = await super().open(host, port_min, port_max, **kwargs)
        assert isinstance(leg, VideoRtpLeg)
        leg._video_ports = (port_min, port_max)
        return leg

    def enable_video(
        self, codecs: Sequence[str] = VIDEO_CODECS, bitrate_kbps: int = DEFAULT_BITRATE_KBPS
    ) -> RtpVideo:
        """
        Open the video stream (once): later offers and answers carry m=video.
        Synchronous (``RtpVideo.bind``), so a re-offer's answer can add it.
        """
        if self.video is None:
            self.video = RtpVideo.bind(
                self.host,
                *self._video_ports,
                advertised_address=self.advertised_address,
                srtp=self.srtp,
                codecs=codecs,
                bitrate_kbps=bitrate_kbps,
            )
        return self.video

    def withdraw_video(self) -> Coroutine[Any, Any, None]:
        """
        Drop the video stream at once, before it was ever negotiated (a first
        offer the phone refused: later offers are audio-only again, as they
        may be since a failed offer changed nothing, RFC 3264 section 8; or an
        answer not yet sent); await the result to close its sockets.
        """
        video, self.video = self.video, None
        self._video_index = None
        return _close(video)

    def create_offer(self, direction: str = "sendrecv") -> bytes:
        sdp = super().create_offer(direction)
        video = self.video
        if video is None or video.closed:
            return sdp
        session = SessionDescription.parse(sdp)
        self._video_index = len(session.media)
        session.media.append(video.offer_media(direction))
        return bytes(session)

    def apply_answer(self, sdp: bytes) -> None:
        super().apply_answer(sdp)
        video = self.video
        if video is None or video.closed or self._video_index is None:
            return
        session = SessionDescription.parse(sdp)
        index, self._video_index = self._video_index, None
        media = session.media[index] if index < len(session.media) else None
        video.apply_answer(session, media)

    def create_answer(self, offer: bytes, direction: str = "sendrecv") -> bytes:
        answer = super().create_answer(offer, direction)
        video = self.video
        if video is None or video.closed:
            return answer
        offered = SessionDescription.parse(offer)
        index = next(
            (
                i
                for i, m in enumerate(offered.media)
                if m.kind == "video" and m.is_rtp and m.port != 0
            ),
            None,
        )
        answered = SessionDescription.parse(answer)
        if index is None or len(answered.media) != len(offered.media):
            video.answer_media(offered, MediaDescription("video", 0), direction)
            return answer
        media = video.answer_media(offered, offered.media[index], direction)
        if media is None:
            return answer
        answered.media[index] = media
        return bytes(answered)

    async def close(self) -> None:
        if self.video is not None:
            await self.video.close()
        await super().close()
