"""
Video on a WebRtcLeg: one sendrecv video transceiver (VP8 preferred, H.264),
its received video as encoded frames or decoded pictures, and an outgoing
track whose source can be swapped at any time.

Forwarding without transcoding. aiortc's RTCRtpSender packetizes an
``av.Packet`` a track yields instead of encoding it (``_next_encoded_frame``
calls ``encoder.pack``). So the receiving side takes the frames aiortc's
receiver re-assembled (after its jitter buffer and NACKs, before its decoder
thread) and hands them on as ``av.Packet``s: no decoding and no encoding,
only depacketizing and packetizing again. The price is that keyframe
requests no longer reach an encoder of ours: a PLI/FIR from the browser
that receives is forwarded as a PLI to the browser that sends (rate
limited), and the forwarded stream starts, and resumes after a loss, at a
keyframe (delta frames before it are dropped). Bitrate is the sending
browser's, steered by aiortc's REMB toward it, not by the receiving browser.

Decoding is only done on demand (``decoded_track()``, e.g. when the two
browsers negotiated different codecs, for tests or recording). Measured
with aiortc's VP8 codecs on this machine: about 5 ms of CPU per 640x480
frame (4.2 ms encoding, 0.8 ms decoding), 15% of a core per direction at
30 frames/s, and 14 ms per 1280x720 frame, about 40% of a core. Forwarding
costs only what aiortc spends on RTP/SRTP anyway, plus re-packetizing.
"""

import asyncio
import logging
import queue
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCRtpSender, RTCRtpTransceiver
from aiortc.contrib.media import MediaRelay
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci
from aiortc.sdp import SessionDescription
from av.frame import Frame

from .stats import VideoStats

__all__ = [
    "VIDEO_TIME_BASE",
    "EncodedVideoSource",
    "EncodedVideoTrack",
    "OutgoingVideoTrack",
    "WebRtcVideo",
    "is_keyframe",
    "offer_has_video",
]

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
PREFERRED_VIDEO_CODECS = ("video/VP8", "video/H264", "video/rtx")
# encoded frames a slow reader may fall behind before it restarts at a keyframe
ENCODED_QUEUE_FRAMES = 30
# decoded pictures kept for a slow reader (the oldest are dropped)
DECODED_QUEUE_FRAMES = 4
# at most one forwarded keyframe request per this many seconds
KEYFRAME_REQUEST_INTERVAL = 0.3
# pts step when the outgoing track switches source (one frame at 30/s)
SOURCE_SWITCH_STEP = VIDEO_CLOCK_RATE // 30


def offer_has_video(sdp: str) -> bool:
    """True when an SDP carries a video m-line that is not rejected (port 0)."""
    for line in sdp.splitlines():
        if line.startswith("m=video "):
            parts = line.split()
            if len(parts) > 1 and parts[1] != "0":
                return True
    return False


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """
    Whether an encoded frame (as aiortc depacketizes it) is a keyframe: VP8
    with the P bit of its frame tag clear (RFC 6386 9.1), H.264 (Annex B)
    with an IDR slice.
    """
    if not data:
        return False
    mime = mime_type.lower()
    if mime == "video/vp8":
        return data[0] & 0x01 == 0
    if mime == "video/h264":
        start = 0
        while True:
            start = data.find(b"\x00\x00\x01", start)
            if start < 0 or start + 3 >= len(data):
                return False
            if data[start + 3] & 0x1F == 5:
                return True
            start += 3
    return False


class _BoundedFrameQueue(asyncio.Queue[Any]):
    """aiortc's remote track queue, dropping the oldest pictures when nobody reads."""

    def __init__(self) -> None:
        super().__init__()

    async def put(self, item: Any) -> None:
        while self.qsize() >= DECODED_QUEUE_FRAMES:
            self.get_nowait()
        self.put_nowait(item)


class _DecoderTap(queue.Queue[Any]):
    """
    Stands in for aiortc's receiver -> decoder-thread queue: hands each
    re-assembled frame to ``on_frame`` (on the event loop, where the receiver
    puts it) and passes it to the decoder only while decoding is wanted. The
    end marker (None) always goes to the decoder thread, which stops on it.
    """

    def __init__(self, on_frame: Callable[[Any, JitterFrame], None]) -> None:
        super().__init__()
        self.decode = False
        self._on_frame = on_frame

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(item, block, timeout)
            return
        codec, frame = item
        try:
            self._on_frame(codec, frame)
        except Exception:  # never break aiortc's receive path
            logger.exception("video frame tap failed")
        if self.decode:
            super().put(item, block, timeout)


class EncodedVideoSource(Protocol):
    """Where an EncodedVideoTrack's frames come from (WebRtcVideo, rtpvideo.RtpVideo)."""

    @property
    def receive_codec(self) -> str | None: ...

    def request_keyframe(self, refresh: bool = False) -> None: ...

    def _unsubscribe(self, track: "EncodedVideoTrack") -> None: ...


class EncodedVideoTrack(MediaStreamTrack):
    """
    The received video as encoded frames (``av.Packet``, pts in 1/90000),
    for an aiortc sender to packetize without transcoding. Starts at a
    keyframe, and restarts at one after it fell behind or the receiver lost
    picture data.
    """

    kind = "video"

    def __init__(self, video: EncodedVideoSource) -> None:
        super().__init__()
        self._video = video
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue()
        self.waiting_keyframe = True

    @property
    def mime_type(self) -> str | None:
        return self._video.receive_codec

    def request_keyframe(self, refresh: bool = False) -> None:
        """
        Ask the sender for a keyframe (rate limited). ``refresh``: for a new
        receiver of the stream, not a picture loss (a SIP phone may then get a
        FIR, which RFC 5104 4.3.1.2 keeps for that, besides the PLI).
        """
        self._video.request_keyframe(refresh=refresh)

    def _push(self, mime_type: str, frame: JitterFrame) -> None:
        if self.readyState != "live":
            return
        if self.waiting_keyframe:
            if not is_keyframe(mime_type, frame.data):
                return
            self.waiting_keyframe = False
        if self._queue.qsize() >= ENCODED_QUEUE_FRAMES:
            # the reader fell behind: dropping frames breaks the references,
            # so start again at a keyframe
            while not self._queue.empty():
                self._queue.get_nowait()
            self.waiting_keyframe = True
            self.request_keyframe()
            return
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = is_keyframe(mime_type, frame.data)
        self._queue.put_nowait(packet)

    def _end(self) -> None:
        self._queue.put_nowait(None)

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet

    def stop(self) -> None:
        super().stop()
        self._video._unsubscribe(self)


class OutgoingVideoTrack(MediaStreamTrack):
    """
    The video we send: whatever ``set_source()`` last attached, decoded
    pictures (aiortc encodes them, honouring PLI/FIR itself) or encoded
    frames from an EncodedVideoTrack (packetized as they are; keyframe
    requests are passed to the source). Nothing is sent without a source.
    Timestamps are rebased so that they keep increasing across sources.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()
        self._offset: int | None = None
        self._last_pts: int | None = None
        self.frames = 0  # handed to the sender (packetized, or encoded by aiortc)

    @property
    def source(self) -> MediaStreamTrack | None:
        return self._source

    def set_source(self, track: MediaStreamTrack | None) -> None:
        if track is self._source:
            return
        self._source = track
        self._offset = None
        self._changed.set()
        if isinstance(track, EncodedVideoTrack):
            # our receiver gets another stream: its decoder needs a refresh point
            track.request_keyframe(refresh=True)

    def keyframe_requested(self) -> None:
        """
        The receiving browser asked for a keyframe (PLI/FIR: aiortc does not
        tell which): passed on as for picture loss, what browsers ask for.
        """
        source = self._source
        if isinstance(source, EncodedVideoTrack):
            source.request_keyframe()

    async def recv(self) -> Frame | av.Packet:  # type: ignore[override]
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self._source
            if source is None or source.readyState != "live":
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            receive = asyncio.ensure_future(source.recv())
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait((receive, changed), return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            if not receive.done():
                receive.cancel()
                continue  # source replaced meanwhile
            try:
                item = receive.result()
            except MediaStreamError:
                if self._source is source:
                    self._source = None
                continue
            if source is not self._source:
                continue
            self.frames += 1
            return self._rebase(item)

    def _rebase(self, item: Any) -> Any:
        pts = item.pts
        if pts is None:
            return item
        if item.time_base != VIDEO_TIME_BASE:
            pts = int(pts * item.time_base / VIDEO_TIME_BASE)
        if self._offset is None:
            start = 0 if self._last_pts is None else self._last_pts + SOURCE_SWITCH_STEP
            self._offset = start - pts
        pts += self._offset
        self._last_pts = pts
        item.pts = pts
        item.time_base = VIDEO_TIME_BASE
        return item

    def stop(self) -> None:
        super().stop()
        self._source = None
        self._changed.set()


class EncodedVideoPublisher:
    """
    The EncodedVideoTracks subscribed to a source of encoded video (WebRtcVideo,
    rtpvideo.RtpVideo): ``subscribe_encoded()`` adds one (and asks for a
    keyframe, where a subscriber starts), ``_unsubscribe()`` drops one,
    ``_end_subscribers()`` ends them all when the source closes.
    """

    _closed: bool

    def __init__(self) -> None:
        self._subscribers: list[EncodedVideoTrack] = []

    @property
    def receive_codec(self) -> str | None:
        raise NotImplementedError

    def request_keyframe(self, refresh: bool = False) -> None:
        raise NotImplementedError

    def subscribe_encoded(self) -> EncodedVideoTrack:
        """A new track of the received video as encoded frames (starts at a keyframe)."""
        track = EncodedVideoTrack(self)
        if self._closed:
            track.stop()
        else:
            self._subscribers.append(track)
            self.request_keyframe(refresh=True)  # a new receiver: a decoder refresh
        return track

    def _unsubscribe(self, track: EncodedVideoTrack) -> None:
        if track in self._subscribers:
            self._subscribers.remove(track)

    def _end_subscribers(self) -> None:
        for track in list(self._subscribers):
            track._end()
        self._subscribers.clear()


class WebRtcVideo(EncodedVideoPublisher):
    """
    The video transceiver of one RTCPeerConnection, with taps on aiortc's
    receiver (encoded frames, decoding on demand, keyframe requests) and
    sender (PLI/FIR from the browser).
    """

    def __init__(self, transceiver: RTCRtpTransceiver) -> None:
        super().__init__()
        self.transceiver = transceiver
        self.outgoing = OutgoingVideoTrack()
        self._relay: MediaRelay | None = None
        self._decoded: MediaStreamTrack | None = None
        self._ssrc: int | None = None
        self._last_keyframe_request: float | None = None
        self._closed = False
        # for call records; aiortc counts no inbound bytes or frames, nor PLIs
        self.packets_received = 0
        self.bytes_received = 0  # RTP payload, RTX retransmissions excluded
        self.frames_received = 0
        self.keyframe_requests_sent = 0
        self.keyframe_requests_received = 0

        receiver = transceiver.receiver
        sender = transceiver.sender
        # aiortc keeps these private; instance attributes shadow the methods it calls
        self._tap = _DecoderTap(self._frame_received)
        if hasattr(receiver, "_RTCRtpReceiver__decoder_queue"):
            receiver._RTCRtpReceiver__decoder_queue = self._tap
        else:  # pragma: no cover - another aiortc version: decode everything
            self._tap.decode = True
            logger.warning("aiortc receiver has no decoder queue: video forwarding disabled")
        self._handle_rtp = receiver._handle_rtp_packet
        receiver._handle_rtp_packet = self._rtp_received  # type: ignore[method-assign]
        self._send_pli = receiver._send_rtcp_pli
        receiver._send_rtcp_pli = self._receiver_pli  # type: ignore[method-assign]
        self._sender_keyframe = sender._send_keyframe
        sender._send_keyframe = self._keyframe_requested  # type: ignore[method-assign]
        self.max_bitrate: int | None = None
        self._send_receiver_rtcp = receiver._send_rtcp
        receiver._send_rtcp = self._receiver_rtcp  # type: ignore[method-assign]

        sender.replaceTrack(self.outgoing)
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [
                codec
                for mime in PREFERRED_VIDEO_CODECS
                for codec in capabilities
                if codec.mimeType.lower() == mime.lower()
            ]
        )

    def prefer_codec(self, mime_type: str) -> bool:
        """
        Offer only this codec (and RTX) from the next offer on, e.g. the one
        of a SIP phone whose video is relayed as it is. False when aiortc has
        no such codec (preferences unchanged).
        """
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        wanted = [c for c in capabilities if c.mimeType.lower() == mime_type.lower()]
        if not wanted:
            return False
        rtx = [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
        self.transceiver.setCodecPreferences(wanted + rtx)
        return True

    # negotiation state

    def negotiated(self, remote_sdp: str | None) -> bool:
        """True once video was negotiated (codecs agreed, m-line not rejected)."""
        if self._closed or not self.transceiver._codecs or remote_sdp is None:
            return False
        if self.transceiver.currentDirection is None or self.transceiver.mid is None:
            return False
        try:
            description = SessionDescription.parse(remote_sdp)
        except (ValueError, AssertionError):
            return False
        for media in description.media:
            if media.kind == "video" and media.rtp.muxId == self.transceiver.mid:
                return media.port != 0
        return False

    @property
    def send_codec(self) -> str | None:
        """MIME type of the negotiated video codec (the same both ways with aiortc)."""
        codecs = self.transceiver._codecs
        return codecs[0].mimeType if codecs else None

    @property
    def receive_codec(self) -> str | None:
        return self.send_codec

    def after_negotiation(self) -> None:
        track = self.transceiver.receiver.track
        if track is not None and not isinstance(getattr(track, "_queue", None), _BoundedFrameQueue):
            track._queue = _BoundedFrameQueue()  # type: ignore[attr-defined]

    # received video

    def decoded_track(self) -> MediaStreamTrack | None:
        """
        The received video decoded (one shared track, unbuffered: a slow
        reader gets the newest picture). Turns on decoding for good.
        """
        if self._decoded is not None:
            return self._decoded
        remote = self.transceiver.receiver.track
        if remote is None or self._closed:
            return None
        self._tap.decode = True
        self.request_keyframe()
        self._relay = MediaRelay()
        self._decoded = self._relay.subscribe(remote, buffered=False)
        return self._decoded

    def subscribe_decoded(self) -> MediaStreamTrack | None:
        """A new track of the decoded received video (turns on decoding)."""
        if self.decoded_track() is None:
            return None
        assert self._relay is not None
        remote = self.transceiver.receiver.track
        return self._relay.subscribe(remote, buffered=False)

    def request_keyframe(self, refresh: bool = False) -> None:
        """
        Send a PLI to the browser (at most one per KEYFRAME_REQUEST_INTERVAL),
        for a ``refresh`` too: aiortc's receiver sends no FIR, and a browser
        answers a PLI with a keyframe all the same.
        """
        if self._ssrc is None or self._closed:
            return
        now = asyncio.get_running_loop().time()
        if (
            self._last_keyframe_request is not None
            and now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL
        ):
            return
        self._last_keyframe_request = now
        self.keyframe_requests_sent += 1
        asyncio.ensure_future(self._send_pli(self._ssrc))

    def set_max_bitrate(self, bitrate: int | None) -> None:
        """
        Cap what the browser sends us (bits/s; None: no cap), when what it
        sends is forwarded to a peer that asked for less (SDP b=AS): aiortc's
        REMB toward the browser never exceeds it, and one goes out at once.
        """
        self.max_bitrate = bitrate
        receiver = self.transceiver.receiver
        rtcp_ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
        if bitrate is None or self._ssrc is None or rtcp_ssrc is None or self._closed:
            return
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(bitrate, [self._ssrc]),
        )
        asyncio.ensure_future(self._send_receiver_rtcp(packet))

    async def _receiver_rtcp(self, packet: Any) -> None:
        cap = self.max_bitrate
        if cap is not None and isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass
            else:
                if bitrate > cap:
                    packet.fci = pack_remb_fci(cap, ssrcs)
        await self._send_receiver_rtcp(packet)

    # statistics

    async def stats(self) -> VideoStats:
        """
        What the video transceiver counted: ours (received packets, bytes
        and frames, keyframe requests both ways, frames handed to the sender)
        and aiortc's (packets and bytes sent, the browser's reports of loss
        and RTT, loss and jitter of what we receive, before retransmission).
        """
        mime = self.send_codec
        stats = VideoStats(
            codec=mime.split("/")[-1].upper() if mime else None,
            packets_received=self.packets_received,
            bytes_received=self.bytes_received,
            frames_sent=self.outgoing.frames,
            frames_received=self.frames_received,
            keyframe_requests_sent=self.keyframe_requests_sent,
            keyframe_requests_received=self.keyframe_requests_received,
        )
        if mime is None:
            return stats  # never negotiated: aiortc's sender has nothing to tell
        for item in (await self.transceiver.sender.getStats()).values():
            if getattr(item, "kind", None) != "video":
                continue  # the transport's statistics
            if item.type == "outbound-rtp":
                stats.packets_sent = item.packetsSent
                stats.bytes_sent = item.bytesSent
            elif item.type == "remote-inbound-rtp":
                stats.remote_packets_lost = item.packetsLost
                stats.remote_fraction_lost = item.fractionLost / 256  # RTCP's 8-bit fraction
                if item.roundTripTime is not None:
                    stats.rtt_ms = item.roundTripTime * 1000
        # aiortc's receiver statistics per SSRC are private; its getStats() keeps only one
        # of the media and RTX streams, so the media stream is looked up by its SSRC
        streams = getattr(self.transceiver.receiver, "_RTCRtpReceiver__remote_streams", {})
        stream = streams.get(self._ssrc) if self._ssrc is not None else None
        if stream is not None:
            stats.packets_lost = max(0, stream.packets_lost)
            stats.jitter_ms = stream.jitter * 1000 / VIDEO_CLOCK_RATE
        return stats

    # aiortc hooks

    async def _rtp_received(self, packet: Any, arrival_time_ms: int) -> None:
        codec = next(
            (c for c in self.transceiver._codecs if c.payloadType == packet.payload_type), None
        )
        first = self._ssrc is None
        if codec is not None and codec.name.lower() != "rtx":
            self._ssrc = packet.ssrc
            self.packets_received += 1
            self.bytes_received += len(packet.payload)
        await self._handle_rtp(packet, arrival_time_ms)
        if first and self._ssrc is not None and self._subscribers:
            self.request_keyframe()
        if first and self._ssrc is not None and self.max_bitrate is not None:
            self.set_max_bitrate(self.max_bitrate)  # the cap, now that the sender is known

    def _frame_received(self, codec: Any, frame: JitterFrame) -> None:
        self.frames_received += 1
        for track in list(self._subscribers):
            track._push(codec.mimeType, frame)

    async def _receiver_pli(self, media_ssrc: int) -> None:
        # aiortc's receiver lost picture data: what follows until the
        # keyframe it asks for would be corrupt for whoever we forward to
        for track in self._subscribers:
            track.waiting_keyframe = True
        self._last_keyframe_request = asyncio.get_running_loop().time()
        self.keyframe_requests_sent += 1
        await self._send_pli(media_ssrc)

    def _keyframe_requested(self) -> None:
        self.keyframe_requests_received += 1
        self._sender_keyframe()  # for aiortc's encoder, when we send pictures
        self.outgoing.keyframe_requested()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._end_subscribers()
        if self._decoded is not None:
            self._decoded.stop()
        self.outgoing.stop()
