"""
The WebRTC leg toward the browser: an aiortc RTCPeerConnection with one
sendrecv audio transceiver, exposed as an AudioPort of 48 kHz by default.

Sample rate: ``set_sample_rate(rate)`` (8000, 16000 or 48000) makes the port
exchange frames at the far leg's rate, which MediaBridge.connect() does, so
that nothing resamples on the way: Opus is encoded from and decoded to that
rate by libopus itself (rtc.opus: 8 kHz for a G.711 SIP leg, 16 kHz for
G.722), and G.711 toward a PCMU/PCMA browser is coded by rtc.g711 at 8 kHz.
Both legs' codecs are coded here, on the event loop: the track hands aiortc
encoded ``av.Packet``s (aiortc only packs them) and the receive hook decodes
packets before aiortc's decoder thread would see them.

Playback rate: ``playback_rate`` (8000 or 16000; None by default) is the far
leg's audio band when the leg is made for a G.711 or G.722 SIP call. Our SDP
then tells the browser ``maxplaybackrate`` for Opus (RFC 7587 section 7): it
encodes narrowband (or wideband) instead of full band, which the SIP leg would
throw away; its uplink is smaller and decoding here costs less than half.

Pass-through (rtc.ports.PassThroughPort, turned on by MediaBridge when the
SIP leg sends the same codec): received 20 ms packets of a codec the far leg
wants are queued undecoded (EncodedFrame), and ``write_encoded`` frames become
the track's packets as they are, timestamped by the track's own 20 ms clock
(up to MAX_GAP_TICKS ticks with nothing to relay send nothing, the browser
conceals the gap; then encoded silence, e.g. on hold). Once the direct
path is up, the received packets go to the ``set_express`` sender in the
datagram callback instead of the queue, and ``send_passed`` sends a payload
straight out (the bridge's express way, rtc.ports.PassThroughPort).
Ringback, hold and DTMF work as before: whatever is written as audio is
encoded, and RFC 4733 events go their own way.

Renegotiation reuses that transceiver: ``create_offer()`` may be called again
once stable (our re-offer, e.g. after ``set_direction("sendonly")`` to hold the
browser), and ``accept_offer()`` again for the browser's re-offers. aiortc
enables or disables its sender and receiver from the negotiated direction.

DTMF: telephone-event is negotiated alongside the audio codecs (see
webrtcdtmf), so the browser's RTCDTMFSender works; ``on_dtmf`` reports its
digits once each and ``send_dtmf`` sends RFC 4733 events to the browser.

Video (see webrtcvideo): a sendrecv video transceiver (VP8 preferred, H.264)
is added when the browser's offer has video, or by ``create_offer(video=True)``;
once added it stays in every later negotiation. ``has_video`` tells whether
video was negotiated, ``set_video_source()`` attaches what we send, and
``video`` gives the received video (encoded, for forwarding, or decoded);
VideoLink forwards one leg's video to another.
"""

import asyncio
import fractions
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceParameters,
    RTCIceServer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import rtp as aiortc_rtp
from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket as AiortcRtpPacket
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

from .circuit import Circuit, Inbound, Outbound, tap
from .dtmf import digit_to_event
from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from .icerestart import IceRestart
from .opus import OPUS_CLOCK_RATE, OpusDecoder, OpusEncoder, packet_samples
from .ports import (
    FRAME_MS,
    MAX_GAP_TICKS,
    EncodedFrame,
    FrameClock,
    Gap,
    MediaQueue,
    PlayoutQueue,
    ReceivingPort,
    frame_samples,
)
from .reorder import ReorderBuffer
from .resample import Resampler
from .rtp import RTP_FIXED_HEADER, parse_received
from .sdes import SRTP_MAX_PACKET
from .sdp import SdpError, SessionDescription, combine_directions, with_opus_parameter
from .sendclock import SendClock
from .srtp import protector, unprotector
from .stats import LegStats, estimate_mos
from .timers import DeadlineTimer
from .udp import adopt
from .webrtcdtmf import TELEPHONE_EVENT, TransceiverDtmf, register_telephone_event
from .webrtcrtcp import pace_reports
from .webrtcvideo import WebRtcVideo, offer_has_video

__all__ = ["WebRtcLeg"]


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server for the browser leg (urls like "stun:host:3478",
    "turn:host:3478?transport=tcp" or "turns:host:5349")."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000  # of the port until set_sample_rate()
SAMPLES_PER_FRAME = frame_samples(SAMPLE_RATE)
# the port rates set_sample_rate() takes: those of the far legs (G.711, G.722, Opus)
PORT_RATES = (8000, 16000, 48000)
# timestamps of the packets handed to aiortc count 48 kHz samples (converted
# by aiortc to each codec's RTP clock)
TIME_BASE = fractions.Fraction(1, OPUS_CLOCK_RATE)
PTS_PER_FRAME = frame_samples(OPUS_CLOCK_RATE)
Decode = Callable[[bytes], npt.NDArray[np.int16]]
G711_RATE = 8000
G711_CODECS = {
    "audio/pcmu": (ulaw_encode, ulaw_decode),
    "audio/pcma": (alaw_encode, alaw_decode),
}
G711_FRAME = frame_samples(G711_RATE)  # bytes of a 20 ms G.711 payload
RECEIVE_QUEUE_FRAMES = 50
# received audio older than this was not wanted when it was fresh
RECEIVE_MAX_AGE = 0.1
PREFERRED_CODECS = ("audio/opus", "audio/PCMU", "audio/PCMA", TELEPHONE_EVENT)
# our Opus encoder toward the browser (rtc.opus)
OPUS_BIT_RATE = 32000
OPUS_COMPLEXITY = 0

# the direct audio path (see WebRtcLeg): codecs whose packets it handles itself
DIRECT_CODECS = ("audio/opus", "audio/pcmu", "audio/pcma", TELEPHONE_EVENT)
NTP_OFFSET = 2208988800  # 1900 -> 1970, seconds
# while the leg sends by itself, how often aiortc's sender task looks whether
# it is needed again (TURN pair, new DTLS transport)
DIRECT_POLL = 0.1
# ... and how long it waits at most while the leg does (send() and the leg's
# filler timer wake it as soon as the direct way is gone)
DIRECT_IDLE = 1.0
# SSRCs of the browser's audio kept statistics for: aiortc reports on each one
# (a receiver report block each, at most 31 fit) and never forgets any
MAX_REMOTE_STREAMS = 4
# how long close() waits for aiortc's peer connection to wind down
CLOSE_TIMEOUT = 5.0

register_telephone_event()


def audio_level_dbov(frame: AudioFrame) -> int:
    """
    aiortc's compute_audio_level_dbov (RFC 6465 appendix A, over the first
    plane as aiortc does), with numpy instead of a Python loop over samples:
    the loop cost about 0.45 ms per 20 ms frame, more than the Opus encoder.
    """
    samples = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16).astype(np.float64)
    rms = float(np.sqrt(np.dot(samples, samples) / (frame.samples * 32767 * 32767)))
    if rms <= 0:
        return -127
    return round(max(-127.0, min(0.0, 20 * np.log10(rms))))


aiortc_rtp.compute_audio_level_dbov = audio_level_dbov


def _parse_sdp(sdp: str) -> SessionDescription:
    """An offer or answer of the browser's, checked before aiortc sees it (ValueError)."""
    try:
        return SessionDescription.parse(sdp)
    except SdpError as exc:
        raise ValueError(f"unusable SDP: {exc}") from exc


def _kinds(session: SessionDescription) -> list[str]:
    """The m-lines' media kinds, in order (RFC 3264: kept by every later offer)."""
    return [m.kind for m in session.media]


def _attribute_values(session: SessionDescription, name: str) -> set[str]:
    """The values of an attribute at session level and in every m-line."""
    pairs = list(session.attributes) + [a for m in session.media for a in m.attributes]
    return {value.strip() for key, value in pairs if key == name and value}


class ImmediateAudioJitterBuffer(AiortcJitterBuffer, ReorderBuffer[AiortcRtpPacket]):
    """
    Replaces aiortc's audio receive buffer (prefetch of 4 packets, i.e. 80 ms,
    and a stall until 16 packets pile up whenever one is lost): every audio
    packet is a whole frame, so pass each one on as soon as it is in order
    (rtc.reorder: at once in a steady stream, after a wait behind a gap only
    once the path has shown reordering) and drop duplicates and packets older
    than the last one passed. Smoothing happens downstream, where the far
    leg's send clock pulls frames (PlayoutQueue).

    ``decode(packet, lost)``, when given, may take the packet instead (it
    returns True; ``lost``: packets missing just before it, up to
    MAX_SEQUENCE_GAP, else 0): the leg decodes Opus itself, synchronously on
    the event loop, rather than through aiortc's decoder thread (a queue
    hand-off to the thread and one back to the loop per frame). Packets that
    come through aiortc's receiver (``add``: over TURN, before the direct path
    is up) are not waited for: there is no timer on that path.
    """

    def __init__(self, decode: Callable[[AiortcRtpPacket, int], bool] | None = None) -> None:
        AiortcJitterBuffer.__init__(self, capacity=16)
        ReorderBuffer.__init__(self)
        self._decode = decode

    def add(self, packet: AiortcRtpPacket) -> tuple[bool, JitterFrame | None]:
        lost = self.admit(packet.sequence_number, packet.ssrc, packet, None)
        decode = self._decode
        if self.ready:
            # what waited behind a gap of the direct path, then this one
            ready, self.ready = self.ready, []
            for held, held_lost in ready:
                if decode is not None:
                    decode(held, held_lost)
        if lost is None:
            return False, None  # duplicate, late or decoded above
        if decode is not None and decode(packet, lost):
            return False, None
        return False, JitterFrame(data=packet.payload, timestamp=packet.timestamp)


def _fatal_to_aiortc(data: bytes) -> bool:
    """
    A datagram that would end aiortc's DTLS transport task, and with it the
    call's media both ways: an empty one (it reads the first byte unchecked),
    or one in SRTP's range (RFC 7983) too long for pylibsrtp (whose ValueError
    it does not catch). No peer of ours sends either; anyone can.
    """
    return not data or (len(data) > SRTP_MAX_PACKET and 127 < data[0] < 192)


def _shortcut(
    original: Callable[[bytes, tuple[Any, ...]], None], direct: Callable[[bytes], bool]
) -> Callable[[bytes, tuple[Any, ...]], None]:
    """A StunProtocol.datagram_received that hands RTP to ``direct`` first."""

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224 and direct(data):
            return
        try:
            original(data, addr)
        except struct.error as exc:
            # aioice's STUN parser raises it, not ValueError, for an attribute
            # of the wrong size: neither STUN to answer nor media, so dropped
            logger.debug("malformed STUN from %s dropped: %s", addr, exc)

    return datagram_received


def _pair_transport(dtls: Any) -> Any:
    """The UDP transport of the nominated ICE pair under ``dtls`` (None: none, or TURN)."""
    pair = dtls._transport._connection._nominated.get(1)
    if pair is None or type(pair.protocol) is not StunProtocol:
        return None
    return pair.protocol.transport


class _DirectRoute:
    """
    What sending audio the direct way needs (see WebRtcLeg._send_direct),
    worked out once per negotiated codec list, sender, DTLS transport and
    nominated ICE pair rather than per packet: the send codec, the RTP header
    template (first byte, payload type, clock rate, the mid extension aiortc
    would send), the SRTP session and the socket's sendto with the pair's
    remote address.
    """

    __slots__ = (
        "clock_rate",
        "codecs",
        "dtls",
        "encoded_here",
        "extension",
        "first",
        "mime",
        "name",
        "pair",
        "payload_type",
        "protect",
        "remote_addr",
        "sender",
        "sendto",
        "srtp",
    )

    def __init__(self, codecs: list[Any], sender: Any, dtls: Any, pair: Any) -> None:
        self.codecs = codecs
        self.sender = sender
        self.dtls = dtls
        self.pair = pair
        codec = codecs[0]
        assert codec.payloadType is not None
        self.mime: str = codec.mimeType.lower()
        self.name = self.mime[6:]  # "audio/...": EncodedFrame.codec
        # a codec we encode (and send) ourselves, not one aiortc encodes
        self.encoded_here = self.mime == "audio/opus" or self.mime in G711_CODECS
        probe = AiortcRtpPacket(payload_type=codec.payloadType)
        probe.extensions.mid = sender._RTCRtpSender__mid
        raw = probe.serialize(sender._RTCRtpSender__rtp_header_extensions_map)
        self.first: int = raw[0]
        self.payload_type: int = codec.payloadType
        self.clock_rate: int = codec.clockRate
        self.extension: bytes = raw[12:]
        self.srtp = dtls._tx_srtp
        self.protect: Callable[[bytes], bytes] = protector(self.srtp)
        self.sendto: Callable[[bytes, Any], None] = pair.protocol.transport.sendto
        self.remote_addr: tuple[str, int] = pair.remote_addr


class OutgoingAudioTrack(MediaStreamTrack):
    """
    The audio we send to the browser, encoded here: Opus from our own libopus
    encoder (mono, VoIP, fed at the port's rate), PCMU/PCMA from rtc.g711 at
    8 kHz, or a payload relayed as received (pass-through).

    Once DTLS is up on a plain UDP pair (the usual case), each frame written
    to the leg is encoded and sent at once (``send``, through the leg's
    ``_send_direct``), stamped by ``clock`` (rtc.sendclock), and the leg's
    filler timer sends silence when nothing is written; aiortc's sender then
    idles in recv(). Before that, and over TURN, recv() serves aiortc's
    sender: frames queued in the PlayoutQueue are paced by a FrameClock
    locked to their arrival phase, and returned as packets which aiortc only
    packs into RTP, on the event loop (RTCRtpSender._next_encoded_frame:
    anything not a Frame goes to ``encoder.pack``). Any other codec would get
    frames for aiortc to encode. Both ways share ``clock``, so timestamps run
    on across a switch.
    """

    kind = "audio"

    def __init__(
        self,
        playout: PlayoutQueue,
        codec: Callable[[], str | None] = lambda: None,
        bit_rate: int = OPUS_BIT_RATE,
        complexity: int = OPUS_COMPLEXITY,
    ) -> None:
        super().__init__()
        self._playout = playout
        self._clock = FrameClock(playout)
        self._codec = codec
        self._bit_rate = bit_rate
        self._complexity = complexity
        self.sample_rate = SAMPLE_RATE
        self._encoder: OpusEncoder | None = None
        self._g711_resampler: Resampler | None = None
        self._silence = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        # timestamps in Opus' 48 kHz units whatever the codec (pts)
        self.clock = SendClock(PTS_PER_FRAME, 0)
        # frames encoded, and relayed as received (pass-through)
        self.encoded = 0
        self.relayed = 0
        self.filled = 0  # silence the leg sent itself: nothing was written
        self._relaying = False  # the last packet was an EncodedFrame as received
        self._gap = 0  # ticks left empty since (aiortc's sender)
        # ``direct_path()``: the leg's way to send by itself (its ``mime``: the
        # codec sent), None while it cannot (then aiortc's sender pulls
        # recv()); ``direct(path, payload, pts, marker)`` sends one packet that way
        self.direct_path: Callable[[], Any] = lambda: None
        self.direct: Callable[[Any, bytes, int, bool], None] | None = None
        self._idle: asyncio.Future[None] | None = None  # recv() while the leg sends

    def wake(self) -> None:
        """The leg may not send by itself any more: recv() looks again now."""
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    def set_sample_rate(self, rate: int) -> None:
        """Frames written from now on are at ``rate`` (the encoders start afresh)."""
        self.sample_rate = rate
        self._encoder = None
        self._g711_resampler = None
        self._silence = np.zeros(frame_samples(rate), dtype=np.int16)

    def send(
        self, item: npt.NDArray[np.int16] | EncodedFrame | None, now: float, written: bool = True
    ) -> bool:
        """
        Encode (or relay) and send ``item`` now through the leg's direct path
        (None: filler silence); False when that path is not available (the
        caller queues the frame for aiortc's sender).
        """
        path = self._route()
        if path is None:
            return False
        # stamped first: a frame the clock drops is not encoded for nothing
        stamped = self.clock.stamp(now, written)
        if stamped is not None:  # else late: filler already went out in its place
            payload = self._payload(item, path.mime)
            assert payload is not None and self.direct is not None
            self.direct(path, payload, *stamped)
        return True

    def relay(self, codec: str, payload: bytes, now: float) -> bool:
        """
        Send a payload of ``codec`` received at ``now`` as it is, through the
        leg's direct path (the bridge's express way); False, with nothing done,
        when the track does not send ``codec`` that way now.
        """
        path = self._route()
        if path is None or path.name != codec:
            return False
        stamped = self.clock.stamp(now)
        if stamped is not None:  # else late: filler already went out in its place
            self.relayed += 1
            assert self.direct is not None
            self.direct(path, payload, *stamped)
        return True

    def _route(self) -> Any:
        """
        The leg's direct path when frames go out that way now, else None: no
        path (aiortc's sender takes over, woken here, from the queue the
        caller fills) or a codec aiortc encodes.
        """
        path = self.direct_path() if self.direct is not None else None
        if path is None:
            self.wake()
            return None
        return path if path.encoded_here else None

    def _payload(
        self, item: npt.NDArray[np.int16] | EncodedFrame | None, mime: str
    ) -> bytes | None:
        if isinstance(item, EncodedFrame):
            if mime == f"audio/{item.codec}":
                self.relayed += 1
                return item.payload
            item = None  # the codec changed under the relay: this frame is lost
        return self._encode_payload(item, mime)

    async def recv(self) -> AudioFrame | av.Packet:
        loop = asyncio.get_running_loop()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self.direct_path() is not None:
                # the leg sends what is written by itself; look again when it
                # cannot (a TURN pair or a new DTLS transport hands back to us:
                # wake()), or after DIRECT_IDLE. A timed poll would cost this
                # task a wake-up per call every DIRECT_POLL for nothing.
                idle = self._idle = loop.create_future()
                timer = loop.call_later(DIRECT_IDLE, self.wake)
                try:
                    await idle
                finally:
                    timer.cancel()
                    self._idle = None
                continue
            item = await self._clock.next()
            if self.readyState != "live":
                raise MediaStreamError
            if isinstance(item, Gap):  # not queued (write_gap); for completeness
                self.clock.skip(item.frames, loop.time())
                continue
            mime = (self._codec() or "").lower()
            if isinstance(item, EncodedFrame) and mime == f"audio/{item.codec}":
                self._relaying = True
                self._gap = 0
            elif item is None and self._relaying and self._gap < MAX_GAP_TICKS:
                # pass-through: nothing to relay this tick, a gap as DTX leaves
                self._gap += 1
                self.clock.skip(1, loop.time())
                continue
            else:
                self._gap = 0
                self._relaying = False
            now = loop.time()
            payload = self._payload(item, mime)
            stamped = self.clock.stamp(now, item is not None)
            if stamped is None:
                continue  # late: filler already went out in its place
            pts, marker = stamped
            if payload is None:
                samples = item if not isinstance(item, EncodedFrame) else None
                return self._frame(samples, pts)  # a codec aiortc encodes
            return self._packet(payload, pts)

    @staticmethod
    def _packet(payload: bytes, pts: int) -> av.Packet:
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet

    def _encode_payload(self, item: npt.NDArray[np.int16] | None, mime: str) -> bytes | None:
        """Encode with our own codecs (Opus, G.711); None for a codec aiortc encodes."""
        rate = self.sample_rate
        samples = item
        if samples is None or len(samples) != len(self._silence):
            samples = self._silence  # nothing to send, or written before a rate change
        payload: bytes | None = None
        if mime == "audio/opus":
            if self._encoder is None or self._encoder.sample_rate != rate:
                self._encoder = OpusEncoder(rate, self._bit_rate, self._complexity)
            payload = self._encoder.encode(samples)
        elif mime in G711_CODECS:
            if rate != G711_RATE:
                if self._g711_resampler is None:
                    self._g711_resampler = Resampler(rate, G711_RATE)
                samples = self._g711_resampler.process(samples)
            payload = G711_CODECS[mime][0](samples)
        if payload is not None:
            self.encoded += 1
        return payload

    def _frame(self, item: npt.NDArray[np.int16] | None, pts: int) -> AudioFrame:
        rate = self.sample_rate
        samples = item
        if samples is None or len(samples) != len(self._silence):
            samples = self._silence
        # aiortc's encoders want stereo; letting its resampler up-mix
        # mono would cost 3 dB (centre mix level), so duplicate the channel here
        stereo = np.repeat(samples, 2).reshape(1, -1)
        frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = rate
        frame.pts = pts * rate // OPUS_CLOCK_RATE
        frame.time_base = fractions.Fraction(1, rate)
        return frame


def to_mono_s16(frame: AudioFrame) -> npt.NDArray[np.int16]:
    """Down-mix a decoded frame (packed or planar, int or float) to mono int16."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if frame.format.is_planar:
        data = data.reshape(channels, -1).T
    else:
        data = data.reshape(-1, channels)
    if np.issubdtype(data.dtype, np.floating):
        mono = data.mean(axis=1) * 32767
    else:
        mono = data.astype(np.int32).sum(axis=1) / channels
    return np.clip(np.rint(mono), -32768, 32767).astype(np.int16)


class WebRtcLeg(ReceivingPort):
    """
    aiortc RTCPeerConnection with one audio transceiver; sample_rate 48000
    until ``set_sample_rate()``.

    ``on_dtmf(digit)`` (attribute or keyword) fires once per digit the
    browser sends; ``last_received`` is the loop time of the last RTP packet.
    ``ice_restart_timeout``: seconds the checks of an ICE restart may take before
    the leg fails (None: ``icerestart.RESTART_TIMEOUT``, 30 s).
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        on_failed: Callable[[], None] | None = None,
        on_dtmf: Callable[[str], None] | None = None,
        ice_servers: Sequence[IceServer] = (),
        opus_bit_rate: int = OPUS_BIT_RATE,
        opus_complexity: int = OPUS_COMPLEXITY,
        playback_rate: int | None = None,
        ice_restart_timeout: float | None = None,
    ) -> None:
        if not 0 <= opus_complexity <= 10:
            raise ValueError("opus_complexity must be 0..10")
        if playback_rate not in (None, *PORT_RATES):
            raise ValueError(f"playback_rate must be one of {PORT_RATES} or None")
        self.playback_rate = playback_rate
        self.on_dtmf = on_dtmf
        self.last_received: float | None = None
        self._dtmf: TransceiverDtmf | None = None
        self._on_failed = on_failed
        self._failed_reported = False
        self._closed = False
        self._playout = PlayoutQueue()
        self._queue = MediaQueue(RECEIVE_QUEUE_FRAMES, RECEIVE_MAX_AGE)
        self._passthrough: Callable[[str], bool] | None = None
        self.frames_passed = 0  # received packets queued undecoded (pass-through)
        self._track = OutgoingAudioTrack(
            self._playout, lambda: self.codec, opus_bit_rate, opus_complexity
        )
        self.sample_rate = SAMPLE_RATE
        # received packets decoded here: codec MIME -> (decode, resampler to the port rate)
        self._decoders: dict[str, tuple[Decode, Resampler | None]] = {}
        self.decoded = 0  # packets decoded (for tests and statistics)
        self._pending = np.zeros(0, dtype=np.int16)
        # payload type -> lower-case MIME type, per negotiated codec list (_mimes)
        self._pt_mimes: tuple[object, dict[int, str]] | None = None
        self._send_codec: tuple[object, str | None] | None = None  # (codec list, name)
        self._transceiver: RTCRtpTransceiver | None = None
        self._reader: asyncio.Task[None] | None = None
        self._video: WebRtcVideo | None = None
        self._video_listeners: list[Callable[[], None]] = []
        # the direct audio path (see _hook_direct)
        self._jitter: ImmediateAudioJitterBuffer | None = None
        self._hooked: tuple[object, object] | None = None  # (ICE connection, DTLS transport)
        self._rx_dtls: object | None = None
        self._route: _DirectRoute | None = None  # of the last _direct_path()
        self._tx_sequence = random.randint(0, 0xFFFF)
        self._tx_origin = random.randint(0, 0xFFFFFFFF)
        self.direct_received = 0  # audio/event packets taken by the direct path
        self.direct_sent = 0  # packets sent by the direct path
        self._track.direct = self._send_direct
        self._track.direct_path = self._direct_path
        self._fill_timer = DeadlineTimer(self._fill_tick)
        self._reorder_timer = DeadlineTimer(self._reorder_tick)
        self._video_allowed = "sendrecv"  # set_video_direction
        self._restarts: list[IceRestart] = []  # of the ICE restart in progress
        self._restart_task: asyncio.Task[None] | None = None
        # seconds the checks of an ICE restart may take (None: icerestart.RESTART_TIMEOUT)
        self.ice_restart_timeout = ice_restart_timeout

        # No ICE servers unless configured: aiortc would otherwise ask a public STUN
        # server, which an on-premises gateway must not do behind its operator's back.
        self._pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                    for s in ice_servers
                ]
            )
        )
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state_change)
        self._pc.on("iceconnectionstatechange", self._on_state_change)

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState

    @property
    def direction(self) -> str | None:
        """The negotiated direction from our side (None before negotiation)."""
        if self._transceiver is None:
            return None
        return self._transceiver.currentDirection

    @property
    def held(self) -> bool:
        """True when either side holds the stream (negotiated direction not sendrecv)."""
        direction = self.direction
        return direction is not None and direction != "sendrecv"

    def set_direction(self, direction: str) -> None:
        """
        The direction we want from the next negotiation on: "sendonly" holds
        the browser, "sendrecv" resumes. Takes effect with the next
        ``create_offer()`` / ``accept_answer()``, or the answer to the
        browser's next offer.
        """
        if direction not in ("sendrecv", "sendonly", "recvonly", "inactive"):
            raise ValueError(f"Invalid direction {direction!r}")
        self._release_circuits()
        self._ensure_transceiver()
        assert self._transceiver is not None
        self._transceiver.direction = direction
        self._apply_video_direction()

    def set_video_direction(self, direction: str) -> None:
        """
        What the far end allows of the video (its m=video turned off or
        inactive: "inactive"; on again: "sendrecv"), combined with the call's
        direction (``set_direction``) from the next negotiation on, so that the
        browser stops showing a picture that no longer comes.
        """
        if direction not in ("sendrecv", "sendonly", "recvonly", "inactive"):
            raise ValueError(f"Invalid direction {direction!r}")
        self._video_allowed = direction
        self._apply_video_direction()

    @property
    def video_direction(self) -> str:
        """What ``set_video_direction`` last allowed ("sendrecv" at first)."""
        return self._video_allowed

    def _apply_video_direction(self) -> None:
        if self._video is not None and self._transceiver is not None:
            wanted = combine_directions(self._transceiver.direction, self._video_allowed)
            self._video.transceiver.direction = wanted

    @property
    def codec(self) -> str | None:
        """MIME type of the codec we send, once negotiated."""
        if self._transceiver is None or not self._transceiver._codecs:
            return None
        return self._transceiver._codecs[0].mimeType

    # AudioPort

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        if self._closed:
            return
        if len(frame) != frame_samples(self.sample_rate):
            raise ValueError(f"WebRtcLeg expects {frame_samples(self.sample_rate)}-sample frames")
        self._release_circuit_out()
        if not self._track.send(frame, asyncio.get_running_loop().time()):
            self._playout.put(frame)

    # pass-through (rtc.ports.PassThroughPort)

    @property
    def send_codec(self) -> str | None:
        """Lower-case name of the codec we send ("opus", "pcmu", "pcma"), once negotiated."""
        # asked per packet (the bridge's pass-through checks): worked out once per
        # negotiated codec list, which aiortc replaces, never changes, on renegotiation
        codecs = self._transceiver._codecs if self._transceiver is not None else None
        cached = self._send_codec
        if cached is None or cached[0] is not codecs:
            codec = self.codec
            cached = self._send_codec = (codecs, codec.split("/", 1)[-1].lower() if codec else None)
        return cached[1]

    @property
    def passthrough(self) -> Callable[[str], bool] | None:
        return self._passthrough

    def set_passthrough(self, wants: Callable[[str], bool] | None) -> None:
        self._passthrough = wants

    def decode_frame(self, frame: EncodedFrame) -> npt.NDArray[np.int16]:
        decoder = self._decoder(f"audio/{frame.codec}")
        if decoder is None:
            raise ValueError(f"No decoder for {frame.codec}")
        return self._decode(decoder, frame.payload)

    def write_encoded(self, frame: EncodedFrame) -> None:
        self._release_circuit_out()
        if not self._closed and not self._track.send(frame, asyncio.get_running_loop().time()):
            self._playout.put(frame)

    def write_gap(self, frames: int) -> None:
        self._release_circuit_out()
        self._track.clock.skip(frames, asyncio.get_running_loop().time())

    def send_passed(self, codec: str, payload: bytes, now: float) -> bool:
        self._release_circuit_out()  # the express way sends now
        return self._closed or self._track.relay(codec, payload, now)

    def circuit_inbound(self, codec: str) -> Inbound | None:
        """This leg's side of a circuit (rtc.circuit) for ``codec`` it relays, or None."""
        transceiver = self._transceiver
        dtls: Any = self._rx_dtls
        jitter = self._jitter
        if (
            self._closed
            or transceiver is None
            or dtls is None
            or jitter is None
            or dtls._rx_srtp is None
            or self._passthrough is None
            or self._express is None
            or len(self._pending)
        ):
            return None
        receiver: Any = transceiver.receiver
        following = jitter.following
        if not receiver._enabled or following is None:
            return None
        ssrc, sequence_number = following
        stream = receiver._RTCRtpReceiver__remote_streams.get(ssrc)
        spec = next((c for c in transceiver._codecs if c.mimeType.lower()[6:] == codec), None)
        if (
            stream is None
            or stream._last_timestamp is None
            or spec is None
            or spec.payloadType is None
        ):
            return None
        step = spec.clockRate * FRAME_MS // 1000
        return Inbound(
            ssrc=ssrc,
            payload_type=spec.payloadType,
            sequence_number=sequence_number,
            timestamp=(stream._last_timestamp + step) & 0xFFFFFFFF,
            step=step,
            frame=0 if codec == "opus" else G711_FRAME,
            clock_rate=spec.clockRate,
            unprotect=unprotector(dtls._rx_srtp),
            jitter=stream._jitter_q4 / 16,
            receiver=_pair_transport(dtls),
        )

    def circuit_outbound(self, codec: str, now: float) -> Outbound | None:
        """This leg's side of a circuit sending ``codec`` through it, or None."""
        route = None if self._closed else self._direct_path()
        if route is None or not route.encoded_here or route.name != codec:
            return None
        sender = route.sender
        dtmf = self._dtmf
        pts = self._track.clock.following(now)
        if not sender._enabled or (dtmf is not None and dtmf.sending) or pts is None:
            return None
        return Outbound(
            first=route.first,
            payload_type=route.payload_type,
            ssrc=sender._ssrc,
            sequence_number=self._tx_sequence,
            timestamp=(self._tx_origin + pts * route.clock_rate // OPUS_CLOCK_RATE) & 0xFFFFFFFF,
            step=self._track.clock.frame_ticks * route.clock_rate // OPUS_CLOCK_RATE,
            extension=route.extension,
            protect=route.protect,
            sendto=route.sendto,
            address=route.remote_addr,
            route=route,
        )

    def circuit_synced_in(self, circuit: Circuit) -> None:
        packets = circuit.packets
        self.direct_received += packets
        self.frames_passed += packets
        self.last_received = circuit.arrival(asyncio.get_running_loop().time())
        dtls: Any = self._rx_dtls
        if dtls is not None:
            dtls._RTCDtlsTransport__rx_bytes += circuit.in_octets
            dtls._RTCDtlsTransport__rx_packets += packets
        last_sequence = (circuit.sequence_number - 1) & 0xFFFF
        transceiver = self._transceiver
        if transceiver is not None:
            streams = transceiver.receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
            stream = streams.get(circuit.ssrc)
            if stream is not None:
                # what StreamStatistics.add would have made of them
                stream.packets_received += packets
                stream.cycles += circuit.wraps << 16
                stream.max_seq = last_sequence
                stream._jitter_q4 = int(circuit.jitter * 16)
                wall = time.time() - (time.monotonic() - circuit.last)
                stream._last_arrival = int(wall * stream._clockrate)
                stream._last_timestamp = (circuit.timestamp - circuit.step) & 0xFFFFFFFF
        jitter = self._jitter
        following = None if jitter is None else jitter.following
        if jitter is not None and following is not None and following[0] == circuit.ssrc:
            jitter.followed(packets, last_sequence)

    def circuit_synced_out(self, circuit: Circuit) -> None:
        packets = circuit.packets
        self._tx_sequence = circuit.out_sequence
        track = self._track
        track.clock.follow_on(packets, circuit.arrival(asyncio.get_running_loop().time()))
        track.relayed += packets
        self.direct_sent += packets
        route = circuit.route
        dtls: Any = route.dtls
        dtls._RTCDtlsTransport__tx_bytes += circuit.out_octets
        dtls._RTCDtlsTransport__tx_packets += packets
        sender: Any = route.sender
        wall = time.time() - (time.monotonic() - circuit.last)
        sender._RTCRtpSender__ntp_timestamp = int((wall + NTP_OFFSET) * (1 << 32))
        last_timestamp = (circuit.out_timestamp - circuit.out_step) & 0xFFFFFFFF
        sender._RTCRtpSender__rtp_timestamp = last_timestamp
        sender._RTCRtpSender__octet_count += circuit.octets
        sender._RTCRtpSender__packet_count += packets

    def set_sample_rate(self, rate: int) -> None:
        """
        Exchange frames at ``rate`` (8000, 16000 or 48000) from now on, the far
        leg's rate, so that the bridge relays without resampling: Opus is then
        encoded from and decoded to that rate by libopus. Audio queued at the
        old rate either way is dropped. A no-op when the rate is unchanged.
        """
        if rate not in PORT_RATES:
            raise ValueError(f"WebRtcLeg sample rate must be one of {PORT_RATES}, not {rate}")
        self._release_circuits()
        if rate == self.sample_rate:
            return
        self.sample_rate = rate
        self._playout.clear()
        self._queue.clear()
        self._pending = np.zeros(0, dtype=np.int16)
        self._decoders.clear()
        self._track.set_sample_rate(rate)

    # negotiation

    def check_offer(self, sdp: str) -> bool:
        """
        Raise ValueError, before aiortc sees it, for an offer this leg cannot
        take: not SDP or without audio (aiortc would answer one with no media
        at all and then fail connecting); a re-offer that removes or reorders
        m-lines (RFC 3264 section 8), or that restarts DTLS (new fingerprint),
        which aiortc cannot do: its DTLS transport keeps its first session.
        Returns True for a re-offer that restarts ICE (new ice-ufrag), which
        ``accept_offer`` does (rtc.icerestart).
        """
        offered = _parse_sdp(sdp)
        if not any(m.kind == "audio" and m.port != 0 for m in offered.media):
            raise ValueError("no audio in the offer")
        current = self._pc.remoteDescription
        if current is None:
            return False
        before = _parse_sdp(current.sdp)
        kinds = _kinds(offered)
        if kinds[: len(before.media)] != _kinds(before):
            raise ValueError(f"m-lines removed or reordered: {kinds}")

        def changed(name: str) -> bool:
            new = _attribute_values(offered, name)
            return bool(new) and not new <= _attribute_values(before, name)

        if changed("fingerprint"):
            raise ValueError("DTLS restart (not supported)")
        if not changed("ice-ufrag"):
            return False
        self._check_restartable()
        return True

    async def accept_offer(self, sdp: str) -> str:
        """
        Answer the browser's offer (initial or re-offer); returns our answer
        with all candidates.
        """
        self._release_circuits()
        restart = self.check_offer(sdp)
        if restart:
            # new local credentials before aiortc writes them into the answer, and
            # the old remote candidates gone before it adds the offer's (on the
            # transports that exist: video added by this offer is bundled with them)
            self._begin_ice_restart()
        try:
            # the transceiver must exist before the offer is applied, since aiortc
            # applies codec preferences while setting the remote description
            self._ensure_transceiver()
            if offer_has_video(sdp):
                self._ensure_video()
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await self._pc.setLocalDescription(await self._pc.createAnswer())
        except BaseException:
            self._abandon_ice_restart()
            raise
        self._hook_direct()
        self._video_negotiated()
        if restart:
            self._run_ice_restart()
        return self._local_sdp()

    async def create_offer(
        self, video: bool = False, video_codec: str | None = None, ice_restart: bool = False
    ) -> str:
        """
        Offer to the browser, initial or a re-offer once the previous exchange
        completed; returns the offer with all candidates. ``video=True`` adds
        a sendrecv video m-line (VP8, H.264); video once added stays offered.
        ``video_codec`` (a MIME type, e.g. a SIP phone's "video/VP8", relayed
        as it is) narrows the video offer to that codec when aiortc has it.
        ``ice_restart=True`` offers new ICE credentials (RFC 8445 section 9);
        the checks run once the answer is applied, and media keeps flowing on
        the current pair until then. ValueError unless ICE has completed.
        """
        self._release_circuits()
        if ice_restart:
            self._check_restartable()
            self._begin_ice_restart()
        try:
            self._ensure_transceiver()
            if video:
                self._ensure_video()
            if video_codec is not None and self._video is not None:
                self._video.prefer_codec(video_codec)
            await self._pc.setLocalDescription(await self._pc.createOffer())
        except BaseException:
            self._abandon_ice_restart()
            raise
        return self._local_sdp()

    def _local_sdp(self) -> str:
        """Our description as the browser gets it: aiortc's, with ``playback_rate``."""
        sdp: str = self._pc.localDescription.sdp
        if self.playback_rate is None or self.playback_rate >= OPUS_CLOCK_RATE:
            return sdp
        return with_opus_parameter(sdp, "maxplaybackrate", self.playback_rate)

    async def accept_answer(self, sdp: str) -> None:
        """
        Apply the browser's answer to our offer; ValueError, before aiortc sees
        it, for one that is not SDP or does not answer each m-line of the offer
        in order (aiortc would take it and fail connecting).
        """
        self._release_circuits()
        kinds = _kinds(_parse_sdp(sdp))
        offer = self._pc.localDescription
        if offer is None or kinds != _kinds(_parse_sdp(offer.sdp)):
            raise ValueError(f"the answer's m-lines do not match the offer: {kinds}")
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._hook_direct()
        self._video_negotiated()
        if self._restarts and not any(r.started for r in self._restarts):
            self._run_ice_restart()

    async def add_ice_candidate(
        self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        if not candidate.strip():
            # end of candidates: aioice declares ICE failed only after it (RFC
            # 8838 4), so without it a browser whose candidates are all
            # unreachable left the call connecting for ever, with no audio
            await self._pc.addIceCandidate(None)
            return
        if candidate.startswith("a="):
            candidate = candidate[2:]
        if candidate.startswith("candidate:"):
            candidate = candidate[len("candidate:") :]
        try:
            ice_candidate = candidate_from_sdp(candidate)
        except (AssertionError, ValueError, IndexError) as exc:
            # aiortc asserts on a short candidate line
            raise ValueError(f"Invalid ICE candidate: {candidate!r}") from exc
        ice_candidate.sdpMid = sdp_mid
        ice_candidate.sdpMLineIndex = sdp_mline_index
        await self._pc.addIceCandidate(ice_candidate)

    # ICE restart (rtc.icerestart)

    def _ice_transports(self) -> list[RTCIceTransport]:
        """The distinct ICE transports of the transceivers (one when bundled)."""
        transports: list[RTCIceTransport] = []
        for transceiver in self._pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is not None and dtls.transport not in transports:
                transports.append(dtls.transport)
        return transports

    def _check_restartable(self) -> None:
        """ValueError unless ICE has completed and no restart is in progress."""
        if self._restarts:
            raise ValueError("ICE restart while another is in progress")
        states = {t.state for t in self._ice_transports()}
        if states != {"completed"}:
            raise ValueError(f"ICE restart while ICE is {'/'.join(sorted(states)) or 'new'}")

    def _begin_ice_restart(self) -> None:
        self._release_circuits()
        self._restarts = [IceRestart(t) for t in self._ice_transports()]

    def _abandon_ice_restart(self) -> None:
        """A restart begun whose checks will not run: back to the previous pair."""
        self._release_circuits()
        for restart in self._restarts:
            restart.abandon()
        self._restarts = [r for r in self._restarts if r.started]

    def _run_ice_restart(self) -> None:
        """The checks of the restart begun, with the far end's credentials (aiortc's parse)."""
        remote: dict[Any, RTCIceParameters] = self._pc._RTCPeerConnection__remoteIce  # type: ignore[attr-defined]
        params = {
            t.receiver.transport.transport: ice
            for t, ice in remote.items()
            if isinstance(t, RTCRtpTransceiver)
        }
        restarts = self._restarts

        async def run() -> None:
            try:
                await asyncio.gather(
                    *(
                        r.run(params[r.transport], self.ice_restart_timeout)
                        for r in restarts
                        if r.transport in params
                    )
                )
            finally:
                for restart in restarts:
                    restart.cancel()
                if self._restarts is restarts:
                    self._restarts = []
                # a new pair may be nominated: a circuit would send on the old one
                # until the next fill tick
                self._release_circuits()

        for restart in restarts:
            restart.started = True
        self._restart_task = asyncio.get_running_loop().create_task(run())

    # video

    @property
    def has_video(self) -> bool:
        """True once video was negotiated with the browser (not rejected)."""
        if self._video is None or self._pc.remoteDescription is None:
            return False
        return self._video.negotiated(self._pc.remoteDescription.sdp)

    @property
    def video(self) -> WebRtcVideo | None:
        """The video transceiver's helper (None until video was offered or asked for)."""
        return self._video

    @property
    def video_codec(self) -> str | None:
        """MIME type of the negotiated video codec."""
        return self._video.send_codec if self.has_video and self._video else None

    @property
    def video_track(self) -> MediaStreamTrack | None:
        """
        The browser's video, decoded (None without video). Asking for it
        turns on decoding on this leg, which costs CPU; VideoLink forwards
        without it.
        """
        if not self.has_video or self._video is None:
            return None
        return self._video.decoded_track()

    def set_video_source(self, track: MediaStreamTrack | None) -> None:
        """
        What we send as video: a track of pictures (aiortc encodes them) or
        of encoded frames (``leg.video.subscribe_encoded()`` of another leg,
        packetized as they are); None sends nothing. Takes effect whenever
        video is negotiated.
        """
        if self._video is None:
            if track is None:
                return
            self._ensure_video()
        assert self._video is not None
        self._video.outgoing.set_source(track)

    def add_video_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each negotiation (offer/answer applied) and on close."""
        self._video_listeners.append(listener)

    def remove_video_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._video_listeners:
            self._video_listeners.remove(listener)

    def _ensure_video(self) -> None:
        if self._video is None and not self._closed:
            self._ensure_transceiver()  # audio first: its m-line leads the BUNDLE group
            transceiver = self._pc.addTransceiver("video", direction="sendrecv")
            self._video = WebRtcVideo(transceiver)
            self._apply_video_direction()

    def _video_negotiated(self) -> None:
        if self._video is not None:
            self._video.after_negotiation()
        for listener in list(self._video_listeners):
            try:
                listener()
            except Exception:
                logger.exception("video listener failed")

    # statistics

    async def stats(self) -> LegStats:
        """
        The leg's statistics from aiortc's getStats(): packets sent/received
        and lost, jitter, the RTT from the browser's RTCP reports, and a MOS
        estimate. ``bytes_sent`` counts RTP payload; ``bytes_received`` is
        what the transport received (aiortc counts no inbound payload bytes).
        """
        self._sync_circuits()
        stats = LegStats(codec=self.codec)
        if self._closed or self._transceiver is None or not self._transceiver._codecs:
            return stats
        clock_rate = self._transceiver._codecs[0].clockRate
        for item in (await self._pc.getStats()).values():
            if getattr(item, "kind", "audio") != "audio":
                continue  # video's RTP streams
            if item.type == "inbound-rtp":
                stats.packets_received += item.packetsReceived
                stats.packets_lost += max(0, item.packetsLost)
                stats.jitter_ms = max(stats.jitter_ms, item.jitter * 1000 / clock_rate)
            elif item.type == "outbound-rtp":
                stats.packets_sent += item.packetsSent
                stats.bytes_sent += item.bytesSent
            elif item.type == "remote-inbound-rtp":
                stats.remote_packets_lost = item.packetsLost
                stats.remote_fraction_lost = item.fractionLost / 256  # aiortc: RTCP's 0-255
                stats.remote_jitter_ms = item.jitter * 1000 / clock_rate
                if item.roundTripTime is not None:
                    # None until a report echoes one of our SRs
                    stats.rtt_ms = item.roundTripTime * 1000
            elif item.type == "transport":
                stats.bytes_received += item.bytesReceived
        expected = stats.packets_received + stats.packets_lost
        if expected:
            stats.fraction_lost = stats.packets_lost / expected
            stats.mos = estimate_mos(stats.fraction_lost, stats.jitter_ms, stats.rtt_ms)
        return stats

    # DTMF

    @property
    def dtmf_negotiated(self) -> bool:
        """True when the browser accepted telephone-event at our audio codec's rate."""
        return self._dtmf is not None and self._dtmf.negotiated

    def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """
        Send digits (0-9 * # A-D) to the browser as RFC 4733 events in place
        of the audio. Raises ValueError for other characters and RuntimeError
        when telephone-event was not negotiated.
        """
        for digit in digits:
            digit_to_event(digit)
        self._release_circuits()
        if self._dtmf is None or not self._dtmf.negotiated:
            raise RuntimeError("telephone-event was not negotiated with the browser")
        self._dtmf.send(digits, max(40, min(duration_ms, 5000)))

    def _dtmf_received(self, digit: str) -> None:
        logger.debug("DTMF %s received from the browser", digit)
        if self.on_dtmf is not None:
            self.on_dtmf(digit)

    def _packet_received(self) -> None:
        self.last_received = asyncio.get_running_loop().time()

    def _ensure_transceiver(self) -> None:
        if self._transceiver is not None:
            return
        self._transceiver = self._pc.addTransceiver(self._track, direction="sendrecv")
        pace_reports(self._transceiver)  # RTCP every ~5 s, as browsers do for audio
        # aiortc keeps the receiver's jitter buffer private (name-mangled)
        receiver = self._transceiver.receiver
        self._jitter = ImmediateAudioJitterBuffer(self._decode_packet)
        if hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            receiver._RTCRtpReceiver__jitter_buffer = self._jitter
        self._dtmf = TransceiverDtmf(self._transceiver, self._packet_received)
        self._dtmf.on_dtmf = self._dtmf_received
        capabilities = RTCRtpSender.getCapabilities("audio").codecs
        preferred = [
            codec
            for mime in PREFERRED_CODECS
            for codec in capabilities
            if codec.mimeType.lower() == mime.lower()
        ]
        self._transceiver.setCodecPreferences(preferred)

    # the direct audio path

    def _hook_direct(self) -> None:
        """
        Take the audio RTP off the ICE connection before aiortc's DTLS
        transport task does (after each negotiation: the transport may change).

        Received: aioice's ``Connection.data_received`` is shadowed, so that an
        SRTP packet (not SRTCP) whose clear-text payload type is our audio codec
        or telephone-event is unprotected with the DTLS transport's SRTP session
        and handled at once, in the datagram callback: no queue, no task, no
        aiortc RtpPacket, no router. Everything else (DTLS, STUN answers' data,
        RTCP, video, other payload types, anything before the DTLS handshake)
        goes to aiortc's queue untouched, except datagrams that would end its
        DTLS transport (``_fatal_to_aiortc``), which are dropped. aiortc's
        receiver statistics (its receiver reports and getStats) are fed the
        same way its receiver would (StreamStatistics per SSRC), and the DTLS
        transport's counters too, so stats() and the browser's view of our RR
        stay right. Malformed STUN that aioice's parser raises on is dropped
        (``_shortcut``).

        Sent: see ``_send_direct``.
        """
        self._release_circuits()
        transceiver = self._transceiver
        if transceiver is None or self._closed:
            return
        dtls = transceiver.receiver.transport
        if dtls is None:
            return
        connection = dtls.transport._connection
        if self._hooked is not None and self._hooked[0] is connection:
            self._rx_dtls = dtls
            return
        original = connection.data_received
        direct = self._receive_direct

        def data_received(data: bytes, component: int) -> None:
            if not direct(data) and not _fatal_to_aiortc(data):
                original(data, component)

        connection.data_received = data_received  # type: ignore[method-assign]
        # Earlier still, on each UDP socket of the connection: aioice parses
        # every datagram as STUN first; an RTP header (version 2, a payload type
        # outside RTCP's range) cannot be STUN (whose first two bits are 0), so
        # our audio skips that parse. Anything else goes the usual way.
        for protocol in connection._protocols:
            if isinstance(protocol, StunProtocol) and "datagram_received" not in vars(protocol):
                protocol.datagram_received = tap(  # type: ignore[method-assign,assignment]
                    self, _shortcut(protocol.datagram_received, direct)
                )
                # after: rtc.udp takes datagram_received as it is when connected
                if adopt(protocol):
                    self._route = None  # it held the loop's transport's sendto
        self._hooked = (connection, dtls)
        self._rx_dtls = dtls
        if not self._fill_timer.armed:
            self._fill_timer.at(asyncio.get_running_loop().time())

    def _receive_direct(self, data: bytes) -> bool:
        """Handle one received datagram here (True) or leave it to aiortc (False)."""
        circuit = self._circuit_in
        if circuit is not None:
            if circuit.take(data):
                return True
            if circuit.concerns(data):
                circuit.release()
        if not 12 <= len(data) <= SRTP_MAX_PACKET or not 127 < data[0] < 192 or 191 < data[1] < 224:
            return False  # not RTP (DTLS, STUN, RTCP), or too long to be ours
        transceiver = self._transceiver
        dtls: Any = self._rx_dtls
        if transceiver is None or dtls is None or self._closed:
            return False
        srtp = dtls._rx_srtp
        if srtp is None:
            return False
        codecs = transceiver._codecs
        mime = self._mimes(codecs).get(data[1] & 0x7F)
        if mime not in DIRECT_CODECS:
            return False  # video, or a codec aiortc decodes
        dtls._RTCDtlsTransport__rx_bytes += len(data)
        dtls._RTCDtlsTransport__rx_packets += 1
        try:
            data = srtp.unprotect(data)
        except pylibsrtp.Error:
            return True  # aiortc drops these too
        packet = parse_received(data)
        if packet is None:
            return True
        self.direct_received += 1
        self.last_received = now = asyncio.get_running_loop().time()
        receiver: Any = transceiver.receiver
        if not receiver._enabled:
            return True
        ssrc = packet.ssrc
        streams = receiver._RTCRtpReceiver__remote_streams
        stream = streams.get(ssrc)
        if stream is None:
            # a peer changing SSRC all the time must not grow the reports for ever:
            # past 31 aiortc's receiver report overflows, and its RTCP task dies
            while len(streams) >= MAX_REMOTE_STREAMS:
                del streams[next(iter(streams))]
            clock_rate = next(c.clockRate for c in codecs if c.payloadType == packet.payload_type)
            stream = streams[ssrc] = StreamStatistics(clock_rate)
        # RFC 4733 events count too: they take the audio's sequence numbers, and
        # left out they were reported as lost (stats, and our receiver reports)
        stream.add(packet)
        if mime == TELEPHONE_EVENT:
            if self._dtmf is not None:
                self._dtmf.receive_event(packet.ssrc, packet.timestamp, packet.payload)
            if self._jitter is not None:
                self._jitter.passed(packet.sequence_number)
            return True
        jitter = self._jitter
        if jitter is not None:
            # as jitter.add(packet) would, with the codec already known, and
            # with a timer to wait behind a gap (rtc.reorder)
            lost = jitter.admit(packet.sequence_number, ssrc, packet, now)  # type: ignore[arg-type]
            if lost is not None:
                self._decode_packet(packet, lost, mime, now)  # type: ignore[arg-type]
            elif jitter.ready or jitter.deadline != self._reorder_timer.when:
                self._reorder_tick(now)
        return True

    def _reorder_tick(self, now: float) -> None:
        """Pass on what the reorder buffer released; a timer for its deadline."""
        jitter = self._jitter
        if jitter is None or self._closed:
            return
        jitter.expire(now)
        ready, jitter.ready = jitter.ready, []
        for packet, lost in ready:
            self._decode_packet(packet, lost, now=now)
        deadline = jitter.deadline
        if deadline is None:
            self._reorder_timer.cancel()
        elif deadline != self._reorder_timer.when:
            self._reorder_timer.at(deadline)

    def _direct_path(self) -> _DirectRoute | None:
        """
        How to send by ourselves (the DTLS transport, the plain UDP ICE pair and
        what _send_direct needs of them), None when that is not possible now.
        Asked per packet: the route is worked out again only when the codecs,
        the DTLS transport, its SRTP session or the nominated pair changed.
        """
        transceiver = self._transceiver
        if transceiver is None or self._closed:
            return None
        sender: Any = transceiver.sender
        dtls: Any = sender.transport
        if dtls is None or dtls._state is not DtlsState.CONNECTED:
            return None
        srtp = dtls._tx_srtp
        if srtp is None:
            return None
        pair = dtls._transport._connection._nominated.get(1)
        if pair is None:
            # an ICE restart in progress: the previous pair carries media until then
            pair = next((r.pair() for r in self._restarts if r.transport is dtls._transport), None)
            if pair is None:
                return None
        route = self._route
        if (
            route is not None
            and route.pair is pair
            and route.dtls is dtls
            and route.srtp is srtp
            and route.codecs is transceiver._codecs
            and route.sender is sender
        ):
            return route
        if type(pair.protocol) is not StunProtocol:
            return None  # TURN: aioice's async path, through aiortc's sender
        route = self._route = _DirectRoute(transceiver._codecs, sender, dtls, pair)
        return route

    def _fill_tick(self, now: float) -> None:
        """While the leg sends by itself: silence when nothing is written."""
        if self._closed:
            return
        steady = self._tick_circuit_out(now)
        if steady is not None:
            # the way to send is checked below on the ticks that sync
            self._fill_timer.at(steady)
            return
        transceiver = self._transceiver
        path = self._direct_path() if transceiver is not None else None
        circuit = self._circuit_out
        if circuit is not None and circuit.route is not path:
            circuit.release()  # aiortc moved the way to send (ICE pair, DTLS)
        direct = path is not None
        if direct and transceiver is not None and transceiver.sender._enabled:
            track = self._track
            fill, again = track.clock.fill(now)
            if fill:
                # the stream stopped: the leg sends by itself, not a circuit
                self._release_circuit_out()
                track.filled += 1
                track.send(None, now, written=False)
        else:
            again = now + DIRECT_POLL  # aiortc's sender fills, or nothing is sent
            if transceiver is not None and not direct:
                self._track.wake()  # so that it does at once
        self._fill_timer.at(again)

    def _send_direct(self, path: _DirectRoute, payload: bytes, pts: int, marker: bool) -> None:
        """
        Send one audio payload toward the browser ourselves (True), as aiortc's
        sender would, but synchronously: RTP header (the sender's SSRC, the
        negotiated payload type, our own sequence number and timestamp, which
        continue across renegotiations, the marker on a talk spurt's first
        packet, the mid header extension aiortc sends), RFC 4733 events in
        place of audio while digits play, SRTP with the DTLS transport's
        session, and the datagram straight onto the nominated ICE pair's UDP
        socket. The sender's counters and RTP/NTP timestamps, which its RTCP
        sender reports carry, and the DTLS transport's are updated.

        ``path`` is what ``_direct_path()`` returned: there is none before
        DTLS is up, nor for a pair that is not plain UDP (TURN relays need
        aioice's async path); aiortc's sender sends then.
        """
        sender = path.sender
        if not sender._enabled:
            return  # not sending (hold): dropped, as aiortc would
        timestamp = (self._tx_origin + pts * path.clock_rate // OPUS_CLOCK_RATE) & 0xFFFFFFFF
        sequence_number = self._tx_sequence
        self._tx_sequence = (sequence_number + 1) & 0xFFFF
        payload_type = path.payload_type
        data = (
            RTP_FIXED_HEADER.pack(
                path.first,
                payload_type | 0x80 if marker else payload_type,
                sequence_number,
                timestamp,
                sender._ssrc,
            )
            + path.extension
            + payload
        )
        dtmf = self._dtmf
        if dtmf is not None and dtmf.sending:
            data = dtmf.replace(data)
            payload = b"" if len(data) < 4 else data[len(data) - 4 :]
        try:
            protected = path.protect(data)
        except (ValueError, pylibsrtp.Error):
            return  # too long for SRTP's buffer: lost (see RtpLeg._sendto)
        path.sendto(protected, path.remote_addr)
        dtls: Any = path.dtls
        dtls._RTCDtlsTransport__tx_bytes += len(protected)
        dtls._RTCDtlsTransport__tx_packets += 1
        sender._RTCRtpSender__ntp_timestamp = int((time.time() + NTP_OFFSET) * (1 << 32))
        sender._RTCRtpSender__rtp_timestamp = timestamp
        sender._RTCRtpSender__octet_count += len(payload)
        sender._RTCRtpSender__packet_count += 1
        self.direct_sent += 1

    def _decode_packet(
        self,
        packet: AiortcRtpPacket,
        lost: int = 0,
        mime: str | None = None,
        now: float | None = None,
    ) -> bool:
        """
        Decode an Opus, PCMU or PCMA packet here (True), or leave it to aiortc
        (False). ``mime``: the packet's codec, ``now``: its arrival, when the
        caller knows them.
        """
        if self._transceiver is None or self._closed:
            return False
        if mime is None:
            mime = self._mimes(self._transceiver._codecs).get(packet.payload_type)
            if mime is None:
                return False
        decoder = self._decoder(mime)
        if decoder is None:
            return False
        if lost:
            # the far leg's timestamps leave room for them; its peer conceals the loss
            self._queue.put(Gap(lost))
        wants = self._passthrough
        if wants is not None:
            name = mime[6:]  # "audio/..."
            # one 20 ms frame per packet, or it is decoded as usual
            if wants(name) and (
                packet_samples(packet.payload) == PTS_PER_FRAME
                if name == "opus"
                else len(packet.payload) == G711_FRAME
            ):
                if len(self._pending):
                    # what is left (under 20 ms) of an odd-sized packet decoded
                    # before it (a broken one, a 10 ms one): dropped, or every
                    # packet after it would be decoded to follow it, 20 ms late
                    # and never relayed again
                    self._pending = self._pending[:0]
                self.frames_passed += 1
                express = self._express
                if express is None or not express(
                    name,
                    packet.payload,
                    asyncio.get_running_loop().time() if now is None else now,
                ):
                    self._queue.put(EncodedFrame(name, packet.payload))
                return True
        try:
            samples = self._decode(decoder, packet.payload)
        except Exception as exc:  # a corrupt packet must not stop the leg
            logger.debug("%s packet not decoded: %s", mime, exc)
            return True
        self._put_received(samples)
        return True

    def _mimes(self, codecs: list[Any]) -> dict[int, str]:
        """Payload type -> lower-case MIME type of the negotiated ``codecs``."""
        cached = self._pt_mimes
        if cached is None or cached[0] is not codecs:
            cached = self._pt_mimes = (
                codecs,
                {c.payloadType: c.mimeType.lower() for c in codecs if c.payloadType is not None},
            )
        return cached[1]

    def _decoder(self, mime: str) -> tuple[Decode, Resampler | None] | None:
        """Our decoder for a codec (to the port's rate), None for codecs aiortc decodes."""
        decoder = self._decoders.get(mime)
        if decoder is None:
            if mime == "audio/opus":
                # libopus decodes straight to the port's rate
                decoder = (OpusDecoder(self.sample_rate).decode, None)
            elif mime in G711_CODECS:
                resampler = (
                    Resampler(G711_RATE, self.sample_rate)
                    if self.sample_rate != G711_RATE
                    else None
                )
                decoder = (G711_CODECS[mime][1], resampler)
            else:
                return None
            self._decoders[mime] = decoder
        return decoder

    def _decode(
        self, decoder: tuple[Decode, Resampler | None], payload: bytes
    ) -> npt.NDArray[np.int16]:
        decode, resampler = decoder
        samples = decode(payload)
        self.decoded += 1
        return samples if resampler is None else resampler.process(samples)

    # events

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._reader is not None or self._closed:
            return
        self._reader = asyncio.get_running_loop().create_task(self._read_track(track))

    def _on_state_change(self) -> None:
        if self._closed or self._failed_reported:
            return
        if self._pc.connectionState in ("failed", "closed") or (
            self._pc.iceConnectionState == "failed"
        ):
            self._failed_reported = True
            logger.info(
                "WebRTC leg failed (connection %s, ICE %s)",
                self._pc.connectionState,
                self._pc.iceConnectionState,
            )
            if self._on_failed is not None:
                self._on_failed()

    async def _read_track(self, track: MediaStreamTrack) -> None:
        resampler: Resampler | None = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            samples = to_mono_s16(frame)
            if frame.sample_rate != self.sample_rate:
                # a codec aiortc decoded, at a rate other than the port's
                if (
                    resampler is None
                    or resampler.in_rate != frame.sample_rate
                    or resampler.out_rate != self.sample_rate
                ):
                    resampler = Resampler(frame.sample_rate, self.sample_rate)
                samples = resampler.process(samples)
            self._put_received(samples)

    def _put_received(self, samples: npt.NDArray[np.int16]) -> None:
        """Queue received audio in whole 20 ms frames of the port's rate."""
        size = frame_samples(self.sample_rate)
        if len(self._pending) == 0 and len(samples) == size:
            self._queue.put(samples)
            return
        pending = np.concatenate((self._pending, samples))
        whole = len(pending) - len(pending) % size
        for start in range(0, whole, size):
            self._queue.put(pending[start : start + size])
        self._pending = pending[whole:]

    async def close(self) -> None:
        if self._closed:
            return
        self._release_circuits()
        self._closed = True
        self._fill_timer.cancel()
        self._reorder_timer.cancel()
        if self._video is not None:
            self._video.close()
        self._video_negotiated()
        self._video_listeners.clear()
        self._queue.close()
        self._track.stop()
        if self._restart_task is not None:
            self._restart_task.cancel()
        for restart in self._restarts:
            restart.cancel()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        try:
            await asyncio.wait_for(self._pc.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            # e.g. a receiver whose RTCP task died waits for it for ever: the
            # call's other resources must still be released
            logger.warning("WebRTC peer connection not closed after %.0f s", CLOSE_TIMEOUT)
