"""
The plain-RTP leg toward SIP: one UDP socket, G.711 (8 kHz), G.722 (16 kHz
audio) or Opus (48 kHz audio), 20 ms frames, packets of the peer's packet time.

Codecs: ``codecs`` (``open`` keyword) lists the ones offered, in order of
preference, and the only ones accepted in answers: "PCMU", "PCMA", "G722",
"opus" (default PCMU, PCMA). An answer takes the offerer's first codec among
them. G.722 uses static payload type 9 with an RTP clock of 8000 (RFC 3551)
though its audio is 16 kHz; it is encoded and decoded with PyAV (rtc.g722).
Opus (RFC 7587) is offered as dynamic payload type 111, ``opus/48000/2`` with
``a=fmtp:111 stereo=0;sprop-stereo=0`` (mono wanted and sent), 20 ms frames,
coded by libopus (rtc.opus) at 48 kHz mono; an answer keeps the offerer's
payload type. In-band FEC is neither sent nor used (loss is concealed by the
jitter buffer), so ``useinbandfec`` is left at its default, 0. With Opus,
telephone-event/48000 (payload type 102) is offered beside telephone-event/8000
and preferred in answers, since RFC 4733 events share the audio's RTP clock.

Sample rate: ``sample_rate`` is the rate of the frames ``read()`` yields and
``write()`` takes. It is 8000 until the first negotiation (``create_answer``
or ``apply_answer``) and then the negotiated codec's audio rate -- 16000 for
G.722 -- fixed for the rest of the leg's life: MediaBridge reads it when it
connects, so connect after negotiating (as the gateway does). Should a later
re-INVITE switch to a codec of another rate, the leg resamples internally and
the port keeps its rate.

Sending (rtc.sendclock): each frame written is encoded and sent at once, in
the writer's call (the browser leg's datagram callback), with RTP timestamps
that follow the frames; when nothing is written for 60 ms the leg sends
encoded silence (or queued in-band DTMF) every 20 ms itself, so the PBX sees
a steady stream (and NATs on the way stay open) whatever the browser does.

Packet time (rtc.packetizer): toward a peer whose SDP (offer or answer) has
``a=ptime`` or ``a=maxptime``, PCMU, PCMA and G.722 go out in packets of its
ptime when that is a multiple of 10 ms, never longer than its maxptime nor
than 60 ms, else of 20 ms (10 ms under a maxptime below 20): each 20 ms
payload, encoded here or relayed, is cut in two or gathered with the next
ones, each packet stamped with its first sample's timestamp. A packet still
filling goes out short where the timeline breaks (a talk spurt starts, RFC
4733 events, a negotiation) and when nothing continued it for 60 ms. Opus
keeps 20 ms packets (a ptime is a preference, and its frames cannot be cut
after encoding) unless the peer's maxptime is below 20: then each frame is
encoded as two 10 ms packets, and its 20 ms payloads are not relayed
(``send_codec`` is None: the bridge transcodes). Our own SDP says
``a=ptime:20`` whatever the peer's: it is what we would like to receive
(RFC 3264 6.1), and 20 ms packets are what pass-through relays undecoded;
any other packet time is received all the same. ``packet_time`` is the
packet time sent, in ms.

Hold is a direction (RFC 3264 section 8.4): ``create_offer(direction=...)``
for our re-INVITEs, ``create_answer(offer)`` for the PBX's. While we may not
send, nothing is sent; on resume the RTP timestamp jumps by the time held but
the sequence number continues, so the stream resumes without a gap the far
end would count as loss (RFC 3550 section 5.1), with the marker bit set on
the first packet.

DTMF: ``send_dtmf`` sends RFC 4733 events when the far end negotiated
telephone-event and generated dual tones in the audio otherwise; ``on_dtmf``
reports received digits, from RFC 4733 events or, without telephone-event,
from a Goertzel detector on the received audio.

Receiving: packets go through an adaptive jitter buffer (rtc.jitterbuffer:
reordering, duplicates, loss concealment, RFC 3389 comfort noise, SSRC and
timestamp changes, a timestamp jump told from a late packet by the sequence
number) that releases each frame as soon as it and those before it are in,
and waits for a missing one up to its adaptive delay before
concealing it; ``read()`` (or the bridge's listener) gets the frames in the
datagram callback that completed them, or from a timer at the end of a wait
(and every 20 ms during comfort noise). A silent or held stream yields
nothing. ``jitter_min``/``jitter_max`` (seconds, 0.02..0.2) bound the
adaptive delay. A packet the codec cannot decode (a corrupt Opus packet) is
dropped as lost.

Latching (symmetric RTP, RFC 4961): the first packet of the negotiated codec
fixes where we send (until a negotiation moves the SDP's address), and from
then on RTP from any other source is dropped: a stranger who finds the port
mid-call can neither be heard in the call nor disturb its jitter buffer. The
peer's own stream moving to a new address (a NAT rebinding: same SSRC, next
sequence numbers, authenticated under SRTP) takes the latch with it after a
short probation (rtc.latch).

SRTP (``srtp`` keyword of ``open``), keyed by SDES (RFC 4568, rtc.sdes):
"off" offers RTP/AVP, ignores crypto lines in answers and offers and refuses
RTP/SAVP offers; "optional" offers RTP/AVP with an ``a=crypto`` line (best
effort, as baresip's "srtp" mode: a PBX without SRTP just ignores it, where
an RTP/SAVP offer would be refused) and answers SAVP and AVP offers alike,
with SRTP whenever the offer carries a usable crypto line; "mandatory"
offers RTP/SAVP and refuses answers and offers without a usable crypto line
(SdpError). Each leg has its own random master key; AES_CM_128_HMAC_SHA1_80
is offered, _32 accepted too. RTP and RTCP are protected both ways; packets
failing authentication are dropped (and never latched onto). Until the
answer to an offer with crypto arrives, received packets are dropped (they
could not be told from SRTP). ``srtp_suite`` is the negotiated suite.

Pass-through (rtc.ports.PassThroughPort; MediaBridge turns it on when the
browser leg sends the same codec): while ``set_passthrough(wants)`` accepts
the negotiated codec, each received 20 ms packet of it is queued undecoded
(an EncodedFrame) through the same kind of jitter buffer without concealment
(rtc.jitterbuffer.PlayoutBuffer; a missing packet is passed on as a Gap, which
the sending leg's timestamps skip so that the browser's decoder conceals it),
and ``write_encoded`` frames are sent as they are, with our own sequence
numbers and timestamps (``write_gap`` skips lost ones; after 60 ms with
nothing to relay, encoded silence keeps the stream going). A packet that
plays at once (in order, nothing held: a steady stream) skips the queue and
the bridge's listener: it goes to the ``set_express`` sender in the
datagram callback; ``send_passed`` is this leg's side of that (a circuit,
rtc.circuit, takes over a steady stream only while the packet time sent is
20 ms: it sends a packet per packet received). In-band DTMF
detection (no telephone-event negotiated and ``on_dtmf`` set) still decodes
each packet, for the detector only; RFC 4733 events, in-band DTMF sending,
statistics and the media timeout are the same in both modes. Packets of
another length (ptime 10, 30...) are decoded as usual. ``frames_decoded``,
``frames_encoded``, ``frames_passed`` (received, undecoded) and
``frames_relayed`` (sent as received) count the work; what a circuit relayed
is in them after the next sync (at most rtc.circuit.SYNC_EVERY later), or at
once after ``stats()``.

RTCP goes over the odd port above the RTP one (or muxed on the RTP port when
the peer does so): a compound SR/RR + SDES about every 5 s, BYE on close.
``stats()`` combines our counters with the peer's reports.
"""

import asyncio
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .circuit import Circuit, Inbound, Outbound, tap
from .dtmf import DtmfEventReceiver, digit_to_event, event_schedule
from .dtmfdetect import DtmfDetector
from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from .g722 import G722_SAMPLE_RATE, G722Decoder, G722Encoder
from .jitterbuffer import JitterBuffer, PlayoutBuffer
from .latch import SourceLatch
from .opus import OPUS_CLOCK_RATE, OpusDecoder, OpusEncoder, OpusError, packet_samples
from .packetizer import MIN_PACKET_MS, Packet, Packetizer, packet_time
from .ports import (
    FRAME_MS,
    EncodedFrame,
    Gap,
    MediaQueue,
    ReceivingPort,
    frame_samples,
)
from .resample import Resampler
from .rtcplink import Address, RtcpLink, sdp_remote
from .rtcpsession import RtcpSession
from .rtp import RTP_FIXED_HEADER, ReceivedRtp, RtpPacket, is_rtcp, parse_received
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
    DIRECTIONS,
    Codec,
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
    answer_direction,
    combine_directions,
    reverse_direction,
    select_codec,
)
from .sendclock import SendClock
from .stats import LegStats
from .timers import DeadlineTimer
from .tones import dtmf_tone
from .udp import open_endpoint

__all__ = ["RtpLeg", "attach_rtp_pair", "bind_rtp_pair"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 8000  # of the audio port before negotiation, and of G.711
SAMPLES_PER_FRAME = frame_samples(SAMPLE_RATE)
# the RTP clock of every codec offered (G.722 included) and of telephone-event
RTP_CLOCK = 8000
RTP_FRAME = frame_samples(RTP_CLOCK)  # timestamp increment of a 20 ms packet
TELEPHONE_EVENT_PT = 101
# telephone-event at Opus' RTP clock, offered along with Opus
TELEPHONE_EVENT_48K_PT = 102
TELEPHONE_EVENT_FMTP = "0-16"
RECEIVE_QUEUE_FRAMES = 50
# received audio older than this was not wanted when it was fresh
RECEIVE_MAX_AGE = 0.1
# jitter buffer bounds (seconds): adaptive between these, the minimum at first
JITTER_MIN = 0.02
JITTER_MAX = 0.2
# RFC 3389 comfort noise, static payload type (RFC 3551)
CN_PT = 13
# a sequence jump this large means a new stream, not reordering
MAX_SEQ_JUMP = 1000
# RFC 4733 2.5.1.2: updates of a long event every 50 ms
DTMF_UPDATE_MS = 50
DTMF_UPDATE_SAMPLES = RTP_CLOCK * DTMF_UPDATE_MS // 1000
# pause after each digit, so that repeated digits stay distinct
DTMF_GAP_MS = 60
MIN_DTMF_MS = 40  # ITU-T Q.24: shorter tones need not be recognised
MAX_DTMF_MS = 5000
MAX_QUEUED_DIGITS = 64
# RFC 3550 6.2: a fixed 5 s minimum suits two-party sessions; randomised
RTCP_INTERVAL = 5.0


Encode = Callable[[npt.NDArray[np.int16]], bytes]
Decode = Callable[[bytes], npt.NDArray[np.int16]]


@dataclass(frozen=True)
class AudioCodec:
    """
    A codec the leg can carry. ``encoder()``/``decoder()`` give a fresh
    (possibly stateful) coder per stream; ``sample_rate`` is the audio's,
    ``clock_rate`` the RTP clock (and rtpmap rate); ``channels`` and ``fmtp``
    what our rtpmap and fmtp lines say.
    """

    name: str
    payload_type: int
    sample_rate: int
    encoder: Callable[[], Encode]
    decoder: Callable[[], Decode]
    clock_rate: int = RTP_CLOCK
    channels: int | None = None
    fmtp: str | None = None

    def sdp(self, payload_type: int | None = None) -> Codec:
        """Our SDP line for it (``payload_type``: the offerer's, in an answer)."""
        return Codec(
            self.payload_type if payload_type is None else payload_type,
            self.name,
            self.clock_rate,
            self.channels,
            self.fmtp,
        )


PCMU = AudioCodec("PCMU", 0, SAMPLE_RATE, lambda: ulaw_encode, lambda: ulaw_decode)
PCMA = AudioCodec("PCMA", 8, SAMPLE_RATE, lambda: alaw_encode, lambda: alaw_decode)
G722 = AudioCodec("G722", 9, G722_SAMPLE_RATE, G722Encoder, G722Decoder)
OPUS = AudioCodec(
    "opus",
    111,
    OPUS_CLOCK_RATE,
    lambda: OpusEncoder(OPUS_CLOCK_RATE).encode,
    lambda: OpusDecoder(OPUS_CLOCK_RATE).decode,
    clock_rate=OPUS_CLOCK_RATE,
    channels=2,  # RFC 7587 section 7: always opus/48000/2
    fmtp="stereo=0;sprop-stereo=0",
)
CODECS = {c.name.upper(): c for c in (PCMU, PCMA, G722, OPUS)}
# codec name -> lower case (EncodedFrame.codec, send_codec), looked up per packet
_LOWER_NAMES = {c.name: c.name.lower() for c in CODECS.values()}
DEFAULT_CODECS = ("PCMU", "PCMA")
SRTP_MODES = ("off", "optional", "mandatory")
SECURE_PROTOS = ("RTP/SAVP", "RTP/SAVPF")
# (kept for compatibility: the G.711 codecs)
G711_CODECS = {"pcmu": PCMU, "pcma": PCMA}
SUPPORTED = [(c.name, SAMPLE_RATE) for c in G711_CODECS.values()]


def _find_event(media: MediaDescription, clock_rate: int) -> Codec | None:
    """telephone-event at the audio codec's RTP clock, else at 8000 (the usual one)."""
    events = [c for c in media.codecs if c.name.lower() == "telephone-event"]
    for wanted in (clock_rate, RTP_CLOCK):
        for event in events:
            if event.clock_rate == wanted:
                return event
    return None


def _codec_list(codecs: tuple[str, ...] | list[str]) -> tuple[AudioCodec, ...]:
    if isinstance(codecs, str):
        raise ValueError("codecs must be a sequence of names, not a string")
    result: list[AudioCodec] = []
    for name in codecs:
        codec = CODECS.get(name.upper())
        if codec is None:
            raise ValueError(f"Unsupported codec {name!r} (supported: {', '.join(CODECS)})")
        if codec not in result:
            result.append(codec)
    if not result:
        raise ValueError("No codec configured")
    return tuple(result)


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, leg: "RtpLeg", rtcp: bool = False) -> None:
        # the leg's handler itself, so that each datagram costs one Python call;
        # RTP through the leg's circuit first (rtc.circuit.tap): none at all
        received: Any = leg._rtcp_received if rtcp else tap(leg, leg._datagram_received)
        self.datagram_received = received  # type: ignore[method-assign]

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the far end is not listening yet
        logger.debug("RTP socket error: %s", exc)


def bind_rtp_pair(host: str, port_min: int, port_max: int) -> tuple[socket.socket, socket.socket]:
    """
    Non-blocking UDP sockets bound to an even port in [port_min, port_max] and
    the port above it (which may be port_max + 1), for RTP and RTCP; tried from
    a random place so that concurrent legs don't race for the same ports.
    """
    ports = list(range(port_min + port_min % 2, port_max + 1, 2))
    if not ports:
        raise ValueError("Empty RTP port range")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    start = random.randrange(len(ports))
    for port in ports[start:] + ports[:start]:
        pair: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                pair.append(sock)
                sock.setblocking(False)
                sock.bind((host, p))
        except OSError:
            for sock in pair:
                sock.close()
            continue
        return pair[0], pair[1]
    raise OSError(f"No free RTP port on {host} in [{port_min}, {port_max}]")


async def attach_rtp_pair(
    sockets: tuple[socket.socket, socket.socket],
    rtp: asyncio.DatagramProtocol,
    rtcp: asyncio.DatagramProtocol,
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]:
    """The transports (rtc.udp) for bind_rtp_pair's sockets (closed on failure)."""
    rtp_socket, rtcp_socket = sockets
    try:
        transport = await open_endpoint(rtp_socket, rtp)
    except BaseException:
        rtp_socket.close()
        rtcp_socket.close()
        raise
    try:
        rtcp_transport = await open_endpoint(rtcp_socket, rtcp)
    except BaseException:
        transport.close()
        rtcp_socket.close()
        raise
    return transport, rtcp_transport


class RtpLeg(ReceivingPort):
    """
    Plain RTP toward SIP: PCMU/PCMA (sample_rate 8000) or G.722 (sample_rate
    16000 once negotiated; see the module docstring).

    DTMF: ``send_dtmf(digits, duration_ms)`` and the ``on_dtmf(digit)``
    callback (attribute or keyword of ``open``), once per key press.

    Jitter buffer: ``jitter_min``/``jitter_max`` in seconds (20..200 ms,
    adaptive from the minimum); ``jitter_buffer`` exposes its counters.

    Media timeout: set ``media_timeout`` (seconds) and ``on_timeout``; the
    callback fires once when no RTP arrived for that long while the stream is
    not held (re-armed by the next packet). ``last_received`` is the loop time
    of the last RTP packet, for callers that prefer to poll.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        host: str,
        media_timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
        on_dtmf: Callable[[str], None] | None = None,
        jitter_min: float = JITTER_MIN,
        jitter_max: float = JITTER_MAX,
        advertised_address: str | None = None,
        codecs: tuple[str, ...] = DEFAULT_CODECS,
        srtp: str = "off",
    ) -> None:
        if srtp not in SRTP_MODES:
            raise ValueError(f"srtp must be one of {', '.join(SRTP_MODES)}, not {srtp!r}")
        if not 0.02 <= jitter_min <= jitter_max <= 0.2:
            raise ValueError("Need 0.02 <= jitter_min <= jitter_max <= 0.2 (seconds)")
        self.host = host
        # what the SDP (c= and o=) tells the far end: a public/NAT address or the
        # host's real one when bound to a wildcard address
        self.advertised_address = advertised_address or host
        self._codecs = _codec_list(codecs)
        # the port's rate: fixed at the first negotiation
        self.sample_rate = SAMPLE_RATE
        self._rate_fixed = False

        # SRTP (SDES)
        self.srtp = srtp
        self._srtp_key = generate_key() if srtp != "off" else b""
        self._srtp: SrtpContext | None = None
        self._offered_crypto: list[CryptoAttribute] = []
        self._proto = "RTP/SAVP" if srtp == "mandatory" else "RTP/AVP"
        self._offered_proto = self._proto
        self._crypto_tag = 1
        # our offer had crypto and no answer came yet: what arrives is undecidable
        self._awaiting_srtp = False
        self.on_dtmf = on_dtmf
        self.local_port = 0
        self.packets_sent = 0
        self.packets_received = 0
        self.media_timeout = media_timeout
        self.on_timeout = on_timeout
        self.last_received: float | None = None
        self._timeout_since = 0.0
        self._timeout_fired = False

        # DTMF
        self._dtmf_queue: deque[tuple[str, int]] = deque()
        self._dtmf_task: asyncio.Task[None] | None = None
        self._dtmf_active = False
        self._inband: deque[npt.NDArray[np.int16]] = deque()
        self._dtmf_receiver = DtmfEventReceiver()
        self._dtmf_detector: DtmfDetector | None = None

        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False

        self._session_id = random.randint(1, 2**31)
        self._session_version = 0

        # negotiated state
        self._codec: AudioCodec | None = None
        self._codec_pt = -1
        self._encode: Encode | None = None
        # port rate -> codec rate, when a re-negotiation changed the codec's rate
        self._send_resampler: Resampler | None = None
        self._receive_codecs: dict[int, AudioCodec] = {}
        self._decoders: dict[int, tuple[AudioCodec, Decode]] = {}
        self._telephone_event_pt: int | None = None  # what we send events on
        self._event_pts: frozenset[int] = frozenset()  # what we take events on
        self._event_clock = RTP_CLOCK  # of the negotiated telephone-event
        self._rtp_frame = RTP_FRAME  # timestamp increment of a 20 ms packet
        # the packet time toward the peer (see Packet time in the module docstring)
        self.packet_time = FRAME_MS
        self._packetizer: Packetizer | None = None  # None: each frame goes out as a packet
        self._flush_timer = DeadlineTimer(self._flush_tick)
        self._opus_halves = False  # Opus encoded as two 10 ms packets per frame
        # the codec whose 20 ms payloads go out as they come (send_codec)
        self._relay_codec: str | None = None
        self._sending = True
        self._receiving = True
        self._direction: str | None = None  # negotiated, from our side
        self._offered_direction = "sendrecv"
        self._sdp_remote: tuple[str, int] | None = None

        # sending, per RFC 3550 5.1: random initial values
        self._ssrc = random.getrandbits(32)
        self._sequence_number = random.getrandbits(16)
        self._clock = SendClock(RTP_FRAME, random.getrandbits(32))  # unwrapped timestamps
        self._fill_timer = DeadlineTimer(self._fill_tick)

        # RTCP
        self.rtcp_interval = RTCP_INTERVAL
        self._rtcp = RtcpSession(self._ssrc, RTP_CLOCK, f"{self._ssrc:08x}@{host}")
        self._rtcp_transport: asyncio.DatagramTransport | None = None
        self._rtcp_link = RtcpLink(self._rtcp)
        self._source = SourceLatch(self._rtcp.receiver, self._rtcp_link)
        self._rtcp_task: asyncio.Task[None] | None = None

        # pass-through (see the module docstring)
        self._passthrough: Callable[[str], bool] | None = None
        self._passing = False  # received packets go to the packet buffer, undecoded
        self._frame_decoders: dict[str, tuple[Decode, Resampler | None]] = {}
        self.frames_decoded = 0
        self.frames_encoded = 0
        self.frames_passed = 0
        self.frames_relayed = 0
        self.frames_filled = 0  # sent by the leg itself: nothing was written (silence, DTMF)

        # receiving
        self._queue = MediaQueue(RECEIVE_QUEUE_FRAMES, RECEIVE_MAX_AGE)
        self._packets: PlayoutBuffer[EncodedFrame] = PlayoutBuffer(
            RTP_FRAME, FRAME_MS, jitter_min, jitter_max
        )
        self._jitter_min = jitter_min
        self._jitter_max = jitter_max
        # the jitter buffer runs at the received codec's audio rate; playout
        # resamples to the port's rate when they differ
        self._jitter_rate = SAMPLE_RATE
        self._jitter = JitterBuffer(SAMPLE_RATE, FRAME_MS, jitter_min, jitter_max)
        self._playout_resampler: Resampler | None = None
        self._detect_resampler: Resampler | None = None  # to 8 kHz for DtmfDetector
        self._playout_timer = DeadlineTimer(self._play)

    @classmethod
    async def open(
        cls,
        host: str = "127.0.0.1",
        port_min: int = 10000,
        port_max: int = 20000,
        *,
        media_timeout: float | None = None,
        on_timeout: Callable[[], None] | None = None,
        on_dtmf: Callable[[str], None] | None = None,
        jitter_min: float = JITTER_MIN,
        jitter_max: float = JITTER_MAX,
        advertised_address: str | None = None,
        codecs: tuple[str, ...] = DEFAULT_CODECS,
        srtp: str = "off",
    ) -> "RtpLeg":
        """
        Bind an even RTP port in [port_min, port_max] and the RTCP port above
        it (which may be port_max + 1).

        ``advertised_address``: the address our SDP gives in ``c=`` and ``o=``
        instead of ``host`` -- the public address of a gateway behind NAT
        (with the same port range forwarded), or the host's address when
        ``host`` is a wildcard such as "0.0.0.0". Symmetric RTP latching
        makes the far end's packets come back the way ours went.

        ``codecs``: what we offer, in order of preference, and accept in
        answers: any of "PCMU", "PCMA", "G722". Raises ValueError for others.

        ``srtp``: "off", "optional" or "mandatory" (see the module docstring).
        """
        leg = cls(
            host,
            media_timeout=media_timeout,
            on_timeout=on_timeout,
            on_dtmf=on_dtmf,
            jitter_min=jitter_min,
            jitter_max=jitter_max,
            advertised_address=advertised_address,
            codecs=codecs,
            srtp=srtp,
        )
        transport, rtcp_transport = await attach_rtp_pair(
            bind_rtp_pair(host, port_min, port_max),
            _RtpProtocol(leg),
            _RtpProtocol(leg, rtcp=True),
        )
        leg._transport = transport
        leg._rtcp_transport = rtcp_transport
        leg.local_port = transport.get_extra_info("sockname")[1]
        return leg

    # AudioPort

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        if self._closed:
            return
        if len(frame) != frame_samples(self.sample_rate):
            raise ValueError(f"RtpLeg expects {frame_samples(self.sample_rate)}-sample frames")
        self._release_circuit_out()
        self._send(frame)

    @property
    def jitter_buffer(self) -> JitterBuffer:
        """The receive jitter buffer (``delay``, ``late``, ``concealed``, ``played``...)."""
        return self._jitter

    # pass-through (rtc.ports.PassThroughPort)

    @property
    def packet_buffer(self) -> PlayoutBuffer[EncodedFrame]:
        """The receive jitter buffer of pass-through (``late``, ``missing``, ``played``...)."""
        return self._packets

    @property
    def send_codec(self) -> str | None:
        # None while Opus goes out in 10 ms packets: a 20 ms Opus payload
        # cannot be cut, so the bridge hands this leg frames to encode instead
        return self._relay_codec

    @property
    def passthrough(self) -> Callable[[str], bool] | None:
        return self._passthrough

    def set_passthrough(self, wants: Callable[[str], bool] | None) -> None:
        self._release_circuits()
        self._passthrough = wants
        if wants is None and self._passing:
            self._stop_playout()
            self._passing = False

    def decode_frame(self, frame: EncodedFrame) -> npt.NDArray[np.int16]:
        codec = CODECS[frame.codec.upper()]
        decoder = self._frame_decoders.get(frame.codec)
        if decoder is None:
            resampler = (
                Resampler(codec.sample_rate, self.sample_rate)
                if codec.sample_rate != self.sample_rate
                else None
            )
            decoder = self._frame_decoders[frame.codec] = (codec.decoder(), resampler)
        self.frames_decoded += 1
        samples = decoder[0](frame.payload)
        return samples if decoder[1] is None else decoder[1].process(samples)

    def write_encoded(self, frame: EncodedFrame) -> None:
        self._release_circuit_out()
        if not self._closed:
            self._send(frame)

    def send_passed(self, codec: str, payload: bytes, now: float) -> bool:
        self._release_circuit_out()  # the express way sends now
        if self._relay_codec != codec:
            return False
        if not self._closed:
            self._send(payload, now)
        return True

    def circuit_inbound(self, codec: str) -> Inbound | None:
        """This leg's side of a circuit (rtc.circuit) for ``codec`` it relays, or None."""
        spec = self._codec
        peer = self._source.address
        if (
            self._closed
            or self._awaiting_srtp
            or not self._passing
            or not self._receiving
            or spec is None
            or _LOWER_NAMES[spec.name] != codec
            or peer is None
            or self._passthrough is None
            or self._express is None
            or self._playout_timer.armed
            or (self._telephone_event_pt is None and self.on_dtmf is not None)  # in-band DTMF
        ):
            return None
        following = self._packets.following
        receiver = self._rtcp.receiver
        if following is None or following[0] != receiver.ssrc:
            return None
        payload_type = next((pt for pt, c in self._receive_codecs.items() if c is spec), None)
        if payload_type is None:
            return None
        return Inbound(
            ssrc=following[0],
            payload_type=payload_type,
            sequence_number=(receiver.max_seq + 1) & 0xFFFF,
            timestamp=following[1],
            step=self._rtp_frame,
            frame=0 if spec is OPUS else self._rtp_frame,
            clock_rate=spec.clock_rate,
            unprotect=self._srtp.unprotect if self._srtp is not None else None,
            peer=peer,
            jitter=receiver.jitter_units,
            transit=receiver.transit,
            receiver=self._transport,
        )

    def circuit_outbound(self, codec: str, now: float) -> Outbound | None:
        """This leg's side of a circuit sending ``codec`` through it, or None."""
        spec = self._codec
        address = self._source.address or self._sdp_remote
        transport = self._transport
        if (
            self._closed
            or spec is None
            or self._relay_codec != codec
            # a circuit sends a packet per packet received: 20 ms ones only
            or self._packetizer is not None
            or self._encode is None
            or address is None
            or transport is None
            or not self._sending
            or self._dtmf_active
            or self._dtmf_queue
            or self._inband
        ):
            return None
        timestamp = self._clock.following(now)
        if timestamp is None:
            return None
        return Outbound(
            first=0x80,
            payload_type=self._codec_pt,
            ssrc=self._ssrc,
            sequence_number=self._sequence_number,
            timestamp=timestamp & 0xFFFFFFFF,
            step=self._clock.frame_ticks,
            extension=b"",
            protect=self._srtp.protect if self._srtp is not None else None,
            sendto=transport.sendto,
            address=address,
        )

    def circuit_synced_in(self, circuit: Circuit) -> None:
        arrival = circuit.arrival(asyncio.get_running_loop().time())
        packets = circuit.packets
        self.packets_received += packets
        self.frames_passed += packets
        self.last_received = arrival
        self._timeout_fired = False
        receiver = self._rtcp.receiver
        following = self._packets.following
        if receiver.ssrc != circuit.ssrc or following is None or following[0] != circuit.ssrc:
            return  # another source since: what the circuit relayed is not its
        receiver.extend(
            packets,
            circuit.octets,
            (circuit.sequence_number - 1) & 0xFFFF,
            circuit.wraps,
            (circuit.timestamp - circuit.step) & 0xFFFFFFFF,
            circuit.transit,
            circuit.jitter,
        )
        self._packets.followed(packets, arrival)

    def circuit_synced_out(self, circuit: Circuit) -> None:
        packets = circuit.packets
        self._sequence_number = circuit.out_sequence
        self._clock.follow_on(packets, circuit.arrival(asyncio.get_running_loop().time()))
        self.packets_sent += packets
        self.frames_relayed += packets
        self._rtcp.rtp_sent(circuit.octets, packets)

    def write_gap(self, frames: int) -> None:
        self._release_circuit_out()
        self._clock.skip(frames, asyncio.get_running_loop().time())

    # negotiation

    @property
    def codecs(self) -> tuple[str, ...]:
        """The codecs we offer and accept, in order of preference."""
        return tuple(c.name for c in self._codecs)

    @property
    def srtp_suite(self) -> str | None:
        """The negotiated SRTP crypto suite, None for plain RTP (or before negotiation)."""
        return self._srtp.suite if self._srtp else None

    @property
    def codec(self) -> str | None:
        """Name of the negotiated codec, None before negotiation."""
        return self._codec.name if self._codec else None

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """Where packets are sent: the latched source, else the SDP address."""
        return self._source.address or self._sdp_remote

    @property
    def latched(self) -> bool:
        return self._source.address is not None

    @property
    def direction(self) -> str | None:
        """The negotiated direction from our side (None before negotiation)."""
        return self._direction

    @property
    def held(self) -> bool:
        """
        True when either side put the stream on hold: the negotiated direction
        is not sendrecv, or the peer's SDP gives no address to send to (RFC
        2543's hold, c=0.0.0.0, which RFC 3264 8.4 still has answerers honour).
        """
        direction = self._direction
        return direction is not None and (direction != "sendrecv" or self._sdp_remote is None)

    def create_offer(self, direction: str = "sendrecv") -> bytes:
        """
        Our offer, initial or a re-INVITE's: ``direction`` is "sendonly" to put
        the PBX on hold, "sendrecv" to resume (or "recvonly"/"inactive").

        Once a codec is negotiated a re-offer keeps the same port and offers
        only that codec (and telephone-event when it was negotiated), so the
        PBX cannot switch codecs under a running bridge; o= version increments.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"Invalid direction {direction!r}")
        if self._codec is not None:
            # a re-offer keeps what was negotiated, SRTP keys included
            proto = self._proto
            crypto = (
                [CryptoAttribute(self._crypto_tag, self._srtp.suite, self._srtp_key)]
                if self._srtp is not None
                else []
            )
        else:
            proto = "RTP/SAVP" if self.srtp == "mandatory" else "RTP/AVP"
            crypto = (
                [CryptoAttribute(1, DEFAULT_SUITE, self._srtp_key)] if self.srtp != "off" else []
            )
            self._awaiting_srtp = bool(crypto)
        self._offered_crypto = crypto
        self._offered_proto = proto
        media = self._local_media(proto, crypto)
        if self._codec is not None:
            media.add_codec(self._codec.sdp(self._codec_pt))
            if self._telephone_event_pt is not None:
                media.add_codec(
                    Codec(
                        self._telephone_event_pt,
                        "telephone-event",
                        self._event_clock,
                        fmtp=TELEPHONE_EVENT_FMTP,
                    )
                )
        else:
            for codec in self._codecs:
                media.add_codec(codec.sdp())
            media.add_codec(
                Codec(TELEPHONE_EVENT_PT, "telephone-event", RTP_CLOCK, fmtp=TELEPHONE_EVENT_FMTP)
            )
            if OPUS in self._codecs:
                media.add_codec(
                    Codec(
                        TELEPHONE_EVENT_48K_PT,
                        "telephone-event",
                        OPUS_CLOCK_RATE,
                        fmtp=TELEPHONE_EVENT_FMTP,
                    )
                )
            # early media may arrive before the answer; decode what we offered
            self._receive_codecs = {c.payload_type: c for c in self._codecs}
        media.direction = direction
        self._offered_direction = direction
        return self._local_sdp([media])

    def apply_answer(self, sdp: bytes) -> None:
        """Apply the answer to our last offer (codec, address, direction)."""
        session = SessionDescription.parse(sdp)
        audio = session.audio()
        codec = select_codec(audio, self._supported())
        if codec is None:
            raise SdpError(f"Answer has none of {', '.join(self.codecs)}")
        crypto = self._answer_crypto(audio)
        remote, rtcp_remote = self._remote_from(session, audio)
        direction = combine_directions(
            self._offered_direction, reverse_direction(session.media_direction(audio))
        )
        self._negotiated(codec, _find_event(audio, codec.clock_rate), audio)
        # RFC 3264 6.1: the answerer may send any payload type its answer kept,
        # e.g. telephone-event at 8000 as well as at the codec's 48000
        self._event_pts = frozenset(
            c.payload_type for c in audio.codecs if c.name.lower() == "telephone-event"
        )
        self._proto = self._offered_proto
        self._set_srtp(crypto)
        self._set_remote(remote, rtcp_remote, direction)

    def _answer_crypto(self, audio: MediaDescription) -> CryptoAttribute | None:
        """The answer's crypto line matching one we offered; SdpError when one is required."""
        if self._offered_crypto:
            for answered in find_crypto(audio.attributes):
                for offered in self._offered_crypto:
                    if answered.tag == offered.tag and answered.suite == offered.suite:
                        return answered
        if self.srtp == "mandatory" and self._offered_crypto:
            raise SdpError("Answer has no usable a=crypto line (SRTP is mandatory)")
        if audio.proto.upper() in SECURE_PROTOS:
            raise SdpError(f"Answer with {audio.proto} but no usable a=crypto line")
        return None

    def _offer_crypto(self, audio: MediaDescription) -> CryptoAttribute | None:
        """The offer's first usable crypto line; SdpError when SRTP can't be agreed."""
        secure = audio.proto.upper() in SECURE_PROTOS
        if self.srtp == "off":
            if secure:
                raise SdpError(f"Offer wants {audio.proto} but SRTP is off")
            return None
        usable = find_crypto(audio.attributes)
        if usable:
            return usable[0]
        if secure:
            raise SdpError(f"Offer with {audio.proto} has no usable a=crypto line")
        if self.srtp == "mandatory":
            raise SdpError("Offer without a=crypto (SRTP is mandatory)")
        return None

    def _set_srtp(self, crypto: CryptoAttribute | None) -> None:
        self._release_circuits()
        self._awaiting_srtp = False
        self._srtp = negotiated_context(self._srtp, self._srtp_key, crypto)
        if crypto is not None:
            self._crypto_tag = crypto.tag

    def create_answer(self, offer: bytes, direction: str = "sendrecv") -> bytes:
        """
        Answer an offer (initial INVITE or re-INVITE). The answer's direction
        honours the offer's (a PBX holding us with sendonly gets recvonly);
        ``direction`` limits it further when we want to hold too.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"Invalid direction {direction!r}")
        session = SessionDescription.parse(offer)
        audio = session.audio()
        codec = select_codec(audio, self._supported())
        if codec is None:
            raise SdpError(f"Offer has none of {', '.join(self.codecs)}")
        crypto = self._offer_crypto(audio)
        remote, rtcp_remote = self._remote_from(session, audio)
        event = _find_event(audio, codec.clock_rate)

        # RFC 3264 6.1: the answer's transport is the offer's
        local = self._local_media(
            audio.proto,
            [] if crypto is None else [CryptoAttribute(crypto.tag, crypto.suite, self._srtp_key)],
        )
        local.add_codec(CODECS[codec.name.upper()].sdp(codec.payload_type))
        if event is not None:
            local.add_codec(
                Codec(event.payload_type, event.name, event.clock_rate, fmtp=TELEPHONE_EVENT_FMTP)
            )
        ours = combine_directions(direction, answer_direction(session.media_direction(audio)))
        local.direction = ours

        # RFC 3264 6: one m= line per offered one, the ones we don't take rejected
        media = []
        for offered in session.media:
            if offered is audio:
                media.append(local)
            else:
                media.append(MediaDescription(offered.kind, 0, offered.proto, offered.formats[:1]))

        self._negotiated(codec, event, audio)
        self._proto = audio.proto
        self._offered_crypto = []
        self._set_srtp(crypto)
        self._set_remote(remote, rtcp_remote, ours)
        return self._local_sdp(media)

    def _local_media(
        self, proto: str = "RTP/AVP", crypto: list[CryptoAttribute] | None = None
    ) -> MediaDescription:
        media = MediaDescription("audio", self.local_port, proto, ptime=FRAME_MS)
        for line in crypto or []:
            media.attributes.append(("crypto", str(line)))
        return media

    def _local_sdp(self, media: list[MediaDescription]) -> bytes:
        self._session_version += 1
        session = SessionDescription(
            origin=Origin(
                "-",
                self._session_id,
                self._session_version,
                self.advertised_address,
                "IP6" if ":" in self.advertised_address else "IP4",
            ),
            connection=self.advertised_address,
            media=media,
        )
        return bytes(session)

    def _remote_from(
        self, session: SessionDescription, audio: MediaDescription
    ) -> tuple[Address | None, Address | None]:
        """The peer's RTP and RTCP addresses (None, None on an RFC 2543 hold)."""
        address = session.media_connection(audio)
        if address is None:
            raise SdpError("SDP has no connection address")
        return sdp_remote(address, audio, ipv6=":" in self.host)

    def _supported(self) -> list[tuple[str, int]]:
        return [(c.name, c.clock_rate) for c in self._codecs]

    def _negotiated(self, codec: Codec, event: Codec | None, peer: MediaDescription) -> None:
        """``codec`` and ``event`` agreed with the peer whose media description is ``peer``."""
        self._release_circuits()
        # audio held for a packet goes out now, under what it was written for
        # (codec, address, direction): a short packet, always allowed
        self._flush_held()
        spec = CODECS[codec.name.upper()]
        rate_changed = False
        if not self._rate_fixed:
            # the first negotiation sets the port's rate for good (a bridge
            # connected afterwards resamples to it)
            self._rate_fixed = True
            if spec.sample_rate != self.sample_rate:
                rate_changed = True
                self.sample_rate = spec.sample_rate
                # nothing queued at the old rate may go out now
                self._inband.clear()
                self._queue.clear()
        if spec is not self._codec:
            # a stateful encoder carries on across re-negotiations of the same codec
            self._encode = spec.encoder()
            self._send_resampler = (
                Resampler(self.sample_rate, spec.sample_rate)
                if spec.sample_rate != self.sample_rate
                else None
            )
        self._codec = spec
        self._codec_pt = codec.payload_type
        self._set_packet_time(spec, peer.ptime, peer.maxptime)
        if self._rtp_frame != frame_samples(spec.clock_rate):
            self._rtp_frame = frame_samples(spec.clock_rate)
            self._clock.frame_ticks = self._rtp_frame
            self._packets = PlayoutBuffer(
                self._rtp_frame, FRAME_MS, self._jitter_min, self._jitter_max
            )
            self._passing = False
        if self._rtcp.clock_rate != spec.clock_rate:
            # RTCP jitter and timestamps count this codec's RTP clock
            self._rtcp.clock_rate = spec.clock_rate
            self._rtcp.receiver.clock_rate = spec.clock_rate
        self._receive_codecs = {codec.payload_type: spec}
        self._telephone_event_pt = event.payload_type if event else None
        # what the peer may send events on (apply_answer widens it)
        self._event_pts = frozenset() if event is None else frozenset((event.payload_type,))
        self._event_clock = event.clock_rate if event else spec.clock_rate
        if rate_changed or spec.sample_rate != self._jitter_rate:
            self._set_jitter_rate(spec.sample_rate)

    def _set_packet_time(self, spec: AudioCodec, ptime: int | None, maxptime: int | None) -> None:
        """What we send a peer asking for ``ptime``/``maxptime`` in ``spec`` (rtc.packetizer)."""
        if spec is OPUS:
            # its frames cannot be cut or (without a repacketizer) joined after
            # encoding: 20 ms, the ptime being only a preference, unless the
            # peer's limit is below that; then 10 ms frames (RFC 7587 6.1)
            ms = MIN_PACKET_MS if packet_time(None, maxptime) < FRAME_MS else FRAME_MS
        else:
            ms = packet_time(ptime, maxptime)
        if ms != self.packet_time:
            logger.info("Sending %d ms packets (peer's ptime %s, maxptime %s)", ms, ptime, maxptime)
        self.packet_time = ms
        self._opus_halves = spec is OPUS and ms < FRAME_MS
        self._relay_codec = None if self._opus_halves else _LOWER_NAMES[spec.name]
        if ms == FRAME_MS or spec is OPUS:
            self._packetizer = None
        else:
            # PCMU, PCMA, G.722: a byte per unit of the 8000 Hz RTP clock
            self._packetizer = Packetizer(spec.clock_rate * ms // 1000)

    def _set_jitter_rate(self, rate: int) -> None:
        """Received audio now comes at ``rate``: a jitter buffer and resamplers for it."""
        self._stop_playout()
        self._jitter_rate = rate
        self._jitter = JitterBuffer(rate, FRAME_MS, self._jitter_min, self._jitter_max)
        self._playout_resampler = (
            Resampler(rate, self.sample_rate) if rate != self.sample_rate else None
        )
        self._detect_resampler = Resampler(rate, SAMPLE_RATE) if rate != SAMPLE_RATE else None
        self._dtmf_detector = None

    def _decoder(self, payload_type: int, codec: AudioCodec) -> Decode:
        current = self._decoders.get(payload_type)
        if current is None or current[0] is not codec:
            current = (codec, codec.decoder())
            self._decoders[payload_type] = current
        return current[1]

    def _set_remote(
        self, remote: Address | None, rtcp_remote: Address | None, direction: str
    ) -> None:
        self._release_circuits()
        was_held = self.held
        if self._rtcp_link.set_remote(remote, rtcp_remote):
            self._source.reset()
        self._sdp_remote = remote
        sending = direction in ("sendrecv", "sendonly") and remote is not None
        if sending and not self._sending:
            # RFC 3551 4.1: first packet after a silence (hold) carries the marker
            self._clock.marker = True
        self._sending = sending
        receiving = direction in ("sendrecv", "recvonly")
        if not receiving:
            # what arrived before the hold is not to be played after it
            self._queue.clear()
            self._stop_playout()
        if receiving and (
            not self._receiving or self._direction != direction or (was_held and remote is not None)
        ):
            # the media timeout counts from the moment we expect media again
            self._timeout_since = asyncio.get_running_loop().time()
            self._timeout_fired = False
        self._receiving = receiving
        self._direction = direction
        if self._rtcp_task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._timeout_since = loop.time()
            self._fill_timer.at(self._timeout_since)
            self._rtcp_task = loop.create_task(self._run_rtcp())

    # DTMF

    @property
    def dtmf_mode(self) -> str | None:
        """ "rfc4733" or "inband" (what send_dtmf uses), None before negotiation."""
        if self._codec is None:
            return None
        return "rfc4733" if self._telephone_event_pt is not None else "inband"

    def send_dtmf(self, digits: str, duration_ms: int = 100, *, inband: bool = False) -> None:
        """
        Queue DTMF digits (0-9 * # A-D), each ``duration_ms`` long followed by
        a short pause. RFC 4733 events when the far end negotiated
        telephone-event (audio paused meanwhile), dual tones in the audio
        otherwise or when ``inband`` asks for them (a peer configured so).
        Raises ValueError for other characters.
        """
        for digit in digits:
            digit_to_event(digit)
        self._release_circuits()
        if len(self._dtmf_queue) + len(digits) > MAX_QUEUED_DIGITS:
            raise ValueError("Too many DTMF digits queued")
        if self._closed or self._codec is None:
            return
        duration_ms = max(MIN_DTMF_MS, min(duration_ms, MAX_DTMF_MS))
        if inband or self._telephone_event_pt is None:
            for digit in digits:
                self._queue_inband(digit, duration_ms)
            return
        self._dtmf_queue.extend((digit, duration_ms) for digit in digits)
        if self._dtmf_task is None:
            self._dtmf_task = asyncio.get_running_loop().create_task(self._run_dtmf())

    def _queue_inband(self, digit: str, duration_ms: int) -> None:
        samples = np.concatenate(
            (
                dtmf_tone(digit, duration_ms, self.sample_rate),
                np.zeros(self.sample_rate * DTMF_GAP_MS // 1000),
            )
        ).astype(np.int16)
        # whole frames, padded with silence
        size = frame_samples(self.sample_rate)
        padded = np.zeros(-(-len(samples) // size) * size, np.int16)
        padded[: len(samples)] = samples
        self._inband.extend(padded.reshape(-1, size))

    async def _run_dtmf(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._dtmf_queue and not self._closed:
                digit, duration_ms = self._dtmf_queue.popleft()
                clock = self._event_clock
                # segmented past 0xFFFF of the event clock (RFC 4733 2.5.1.3)
                schedule = event_schedule(
                    digit,
                    clock * duration_ms // 1000,
                    update_interval=clock * DTMF_UPDATE_MS // 1000,
                    end_interval=frame_samples(clock),
                )
                # the event starts where the next audio packet would have
                start = loop.time()
                event_start = self._clock.peek(start)
                timestamp = event_start & 0xFFFFFFFF
                # the audio before the event goes out before it
                self._flush_held()
                self._dtmf_active = True
                for packet in schedule:
                    await asyncio.sleep(start + packet.offset / clock - loop.time())
                    self._send_event(
                        timestamp + packet.timestamp, bytes(packet.event), marker=packet.marker
                    )
                self._dtmf_active = False
                # audio resumes after the event's time, as a new talk spurt
                self._clock.resync(event_start + self._clock.frame_ticks * duration_ms // FRAME_MS)
                await asyncio.sleep(DTMF_GAP_MS / 1000)
        finally:
            self._dtmf_active = False
            self._dtmf_task = None

    def _send_event(self, timestamp: int, payload: bytes, marker: bool) -> None:
        addr = self.remote_address
        pt = self._telephone_event_pt
        if pt is None or addr is None or not self._sending or self._transport is None:
            return
        packet = RtpPacket(
            payload_type=pt,
            sequence_number=self._sequence_number,
            timestamp=timestamp & 0xFFFFFFFF,
            ssrc=self._ssrc,
            payload=payload,
            marker=marker,
        )
        self._sequence_number = (self._sequence_number + 1) & 0xFFFF
        if self._sendto(bytes(packet), addr):
            self.packets_sent += 1
            self._rtcp.rtp_sent(len(payload))

    def _dtmf_received(self, digit: str) -> None:
        logger.debug("DTMF %s received", digit)
        if self.on_dtmf is not None:
            self.on_dtmf(digit)

    # sending

    def _fill_tick(self, now: float) -> None:
        """
        The leg's own timer: filler frames while nothing is written (silence,
        in-band DTMF), and the media timeout.
        """
        if self._closed:
            return
        steady = self._tick_circuit_out(now)
        self._check_timeout(now)
        if steady is not None:
            again = steady  # a circuit sends: nothing to fill
        elif self._sending:
            fill, again = self._clock.fill(now)
            if fill:
                # the stream stopped: the leg sends by itself, not a circuit
                self._release_circuit_out()
                self.frames_filled += 1
                self._send(None, now)
        else:
            again = now + 0.1  # held: only the media timeout to watch
        if self._closed:
            return
        self._fill_timer.at(again)

    def restart_media_timeout(self) -> None:
        """
        Count the media timeout from now (e.g. when the call is answered: a
        ring longer than the timeout fired it while nobody cared, and it
        would otherwise fire again only after a packet arrived).
        """
        self._timeout_since = asyncio.get_running_loop().time()
        self._timeout_fired = False

    def _check_timeout(self, now: float) -> None:
        if self.media_timeout is None or self._timeout_fired or self.held or not self._receiving:
            return
        since = max(self._timeout_since, self.last_received or 0.0)
        circuit = self._circuit_in
        if circuit is not None and circuit.packets:
            # relayed since the last sync (up to SYNC_EVERY ago)
            since = max(since, circuit.arrival(now))
        if now - since >= self.media_timeout:
            self._timeout_fired = True
            logger.info("No RTP for %.1f s", now - since)
            if self.on_timeout is not None:
                self.on_timeout()

    def _send(
        self,
        frame: npt.NDArray[np.int16] | EncodedFrame | bytes | None,
        now: float | None = None,
    ) -> None:
        """
        Send a frame written to the leg now, or filler (None, from the timer);
        bytes: a payload of the negotiated codec to relay (``send_passed``).
        """
        addr = self._source.address or self._sdp_remote  # remote_address, without a property call
        transport = self._transport
        if self._encode is None or addr is None or not self._sending or transport is None:
            return
        written = frame is not None
        if now is None:
            now = asyncio.get_running_loop().time()
        # written frames count even when they are not sent (RFC 4733 events
        # replace the audio): the stream's timeline goes on under the events
        stamped = self._clock.stamp(now, written)
        if stamped is None:
            return  # late: filler already went out in its place
        timestamp, marker = stamped
        if self._dtmf_active:
            return
        if self._inband:
            # in-band DTMF replaces the audio while it plays
            frame = self._inband.popleft()
        if isinstance(frame, bytes):
            payload = frame
            self.frames_relayed += 1
        elif isinstance(frame, EncodedFrame):
            if frame.codec != self._relay_codec:
                # the codec changed under the relay: this frame is lost
                return
            payload = frame.payload
            self.frames_relayed += 1
        else:
            if frame is None:
                frame = np.zeros(frame_samples(self.sample_rate), dtype=np.int16)
            if self._send_resampler is not None:
                frame = self._send_resampler.process(frame)
            self.frames_encoded += 1
            if self._opus_halves:
                self._send_packets(self._encode_halves(frame, timestamp, marker), addr)
                return
            payload = self._encode(frame)
        packetizer = self._packetizer
        if packetizer is not None:
            # a packet time other than 20 ms; the common case pays this test only
            self._send_packets(packetizer.push(timestamp, marker, payload, now), addr)
            if not self._flush_timer.armed:
                deadline = packetizer.deadline
                if deadline is not None:
                    self._flush_timer.at(deadline)
            return
        sequence_number = self._sequence_number
        self._sequence_number = (sequence_number + 1) & 0xFFFF
        header = RTP_FIXED_HEADER.pack(
            0x80,
            self._codec_pt | 0x80 if marker else self._codec_pt,
            sequence_number,
            timestamp & 0xFFFFFFFF,
            self._ssrc,
        )
        data = header + payload
        if self._srtp is not None:
            try:
                data = self._srtp.protect(data)
            except (ValueError, SrtpError):
                return  # as in _sendto
        transport.sendto(data, addr)
        self.packets_sent += 1
        self._rtcp.rtp_sent(len(payload))

    def _encode_halves(
        self, frame: npt.NDArray[np.int16], timestamp: int, marker: bool
    ) -> list[Packet]:
        """A frame as two 10 ms Opus packets (a peer's maxptime below 20)."""
        encode = self._encode
        assert encode is not None  # _send sends nothing before negotiation
        half = len(frame) // 2
        return [
            (timestamp, marker, encode(frame[:half])),
            (timestamp + self._rtp_frame // 2, False, encode(frame[half:])),
        ]

    def _send_packets(self, packets: list[Packet], addr: tuple[str, int]) -> None:
        """
        Packets of another packet time than the frames' (rtc.packetizer), in
        order. The 20 ms path in ``_send`` does the same inline, a call less
        per packet.
        """
        pt = self._codec_pt
        for timestamp, marker, payload in packets:
            sequence_number = self._sequence_number
            self._sequence_number = (sequence_number + 1) & 0xFFFF
            header = RTP_FIXED_HEADER.pack(
                0x80,
                pt | 0x80 if marker else pt,
                sequence_number,
                timestamp & 0xFFFFFFFF,
                self._ssrc,
            )
            if self._sendto(header + payload, addr):
                self.packets_sent += 1
                self._rtcp.rtp_sent(len(payload))

    def _flush_held(self) -> None:
        """
        Send what the packetizer holds, as a short packet: the stream stops
        or changes (RFC 4733 events, a negotiation) or nothing continued it.
        """
        packetizer = self._packetizer
        if packetizer is None:
            return
        packet = packetizer.flush()
        addr = self._source.address or self._sdp_remote
        if packet is None or addr is None or self._transport is None or not self._sending:
            return
        self._send_packets([packet], addr)

    def _flush_tick(self, now: float) -> None:
        """The packetizer's deadline: what it holds goes out unless a frame continued it."""
        packetizer = self._packetizer
        if self._closed or packetizer is None:
            return
        deadline = packetizer.deadline
        if deadline is None:
            return
        if now < deadline:
            self._flush_timer.at(deadline)
            return
        self._flush_held()

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> bool:
        """
        Send an RTP packet, as SRTP when negotiated. False: it is lost, too
        long for SRTP's buffer: a payload relayed from the browser that no real
        encoder makes (Opus never goes past 1276 bytes in 20 ms), which must
        not raise in the receive path of the other leg once per packet.
        """
        assert self._transport is not None
        if self._srtp is not None:
            try:
                data = self._srtp.protect(data)
            except (ValueError, SrtpError):
                return False
        self._transport.sendto(data, addr)
        return True

    # receiving

    def _datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        circuit = self._circuit_in
        if circuit is not None:
            if circuit.take(data, addr):
                return
            if circuit.concerns(data, addr):
                circuit.release()
        if self._closed:
            return
        if is_rtcp(data):
            # RFC 5761 rtcp-mux, if the peer does it
            self._rtcp_received(data, addr, muxed=True)
            return
        if self._awaiting_srtp:
            return
        source = self._source
        latched = source.address
        stranger = latched is not None and addr != latched
        if stranger and not source.may_continue(data):
            # not our peer (see Latching in the module docstring)
            return
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect(data)
            except SrtpError:
                # forged, replayed or plain: nothing to play and nothing to latch onto
                return
        packet = parse_received(data)
        if packet is None:
            return
        if stranger:
            if not source.moved(addr, packet.sequence_number):
                return
            logger.info("RTP source moved from %s to %s (NAT rebinding)", latched, addr)
            self._release_circuits()  # where we send moved too
        # one clock reading for everything this packet causes
        now = asyncio.get_running_loop().time()
        if packet.payload_type in self._event_pts:
            self._count_received(packet, now)
            if self._receiving:
                digit = self._dtmf_receiver.feed(packet.ssrc, packet.timestamp, packet.payload)
                if digit is not None:
                    self._dtmf_received(digit)
            return
        if packet.payload_type == CN_PT:
            # RFC 3389 comfort noise: understood even though we do not offer it
            self._count_received(packet, now)
            if self._receiving:
                # CN counts the audio codec's RTP clock
                clock = self._codec.clock_rate if self._codec is not None else RTP_CLOCK
                scale = max(1, self._jitter_rate // clock)
                self._jitter.put_comfort_noise(
                    packet.ssrc, (packet.timestamp * scale) & 0xFFFFFFFF, packet.payload, now
                )
                self._play(now)
            return
        codec = self._receive_codecs.get(packet.payload_type)
        if codec is None:
            # not negotiated
            return
        continues = self._count_received(packet, now)
        if packet.payload_type == self._codec_pt and source.address is None:
            # symmetric RTP (RFC 4961): answer to where the far end really is
            self._release_circuits()
            source.latch(addr)
        if not self._receiving:
            # we are sendonly/inactive: the far end's audio is not wanted
            return
        if codec.sample_rate != self._jitter_rate:
            # early media in another of the offered codecs than expected
            self._set_jitter_rate(codec.sample_rate)
        if self._pass_through(packet, codec, now, continues):
            return
        if self._passing:
            # back to decoding (pass-through off, or a packet it cannot take)
            self._stop_playout()
            self._passing = False
        samples = self._decode_packet(packet, codec)
        if samples is None:
            return  # lost, as if it had not arrived
        # in the jitter buffer, timestamps count audio samples
        scale = codec.sample_rate // codec.clock_rate
        self._buffer(
            packet.ssrc,
            (packet.timestamp * scale) & 0xFFFFFFFF,
            packet.marker,
            samples,
            now,
            continues,
        )

    def _pass_through(
        self, packet: ReceivedRtp, codec: AudioCodec, now: float, continues: bool
    ) -> bool:
        """
        Queue the packet undecoded (True) when pass-through takes it;
        ``continues``: it is the next in sequence (the statistics say).
        """
        wants = self._passthrough
        if wants is None or codec is not self._codec:
            return False
        name = _LOWER_NAMES[codec.name]
        if not wants(name):
            return False
        # one 20 ms frame per packet, or it is decoded as usual
        if codec is OPUS:
            if packet_samples(packet.payload) != self._rtp_frame:
                return False
        elif len(packet.payload) != self._rtp_frame:
            return False
        if not self._passing:
            self._stop_playout()
            self._passing = True
        self.frames_passed += 1
        if not self._playout_timer.armed and self._packets.take(packet.ssrc, packet.timestamp, now):
            # the next in order with nothing held: played now (what _play would do)
            if self._telephone_event_pt is None and self.on_dtmf is not None:
                self._detect_passed(packet.payload)
            express = self._express
            if express is None or not express(name, packet.payload, now):
                self._queue.put(EncodedFrame(name, packet.payload))
            return True
        # not the frame that plays next: a gap, late, reordered, or the
        # timeline jumped (continues says which of the last two)
        self._packets.put(
            packet.ssrc,
            packet.timestamp,
            EncodedFrame(name, packet.payload),
            now,
            packet.marker,
            continues,
        )
        self._play(now)
        return True

    def _decode_packet(
        self, packet: ReceivedRtp, codec: AudioCodec
    ) -> npt.NDArray[np.int16] | None:
        """The packet's audio, counted; None for a corrupt one (libopus refuses it)."""
        try:
            samples = self._decoder(packet.payload_type, codec)(packet.payload)
        except (OpusError, ValueError) as exc:
            logger.debug("%s packet not decoded: %s", codec.name, exc)
            return None
        self.frames_decoded += 1
        return samples

    def _count_received(self, packet: ReceivedRtp, now: float) -> bool:
        """Count the packet; True when it continues the stream (ReceiverStatistics.add)."""
        self.packets_received += 1
        self.last_received = now
        self._timeout_fired = False
        # RFC 3550 jitter wants the arrival to a fraction of a timestamp unit:
        # uvloop's loop.time() (``now``) counts whole milliseconds, read once
        # per loop iteration (8 units of the 8 kHz clock)
        return self._rtcp.rtp_received(
            packet.ssrc,
            packet.sequence_number,
            packet.timestamp,
            time.monotonic(),
            len(packet.payload),
        )

    # RTCP

    def stats(self) -> LegStats:
        """Counters, loss, jitter, RTT (from the peer's RTCP) and a MOS estimate."""
        self._sync_circuits()
        return self._rtcp.stats(self.codec)

    def _rtcp_received(self, data: bytes, addr: tuple[str, int], muxed: bool = False) -> None:
        if self._closed or self._awaiting_srtp:
            return
        self._rtcp_link.receive(
            data, addr, muxed, self._srtp, time.time(), asyncio.get_running_loop().time()
        )

    def _send_rtcp(self, bye: bool = False) -> None:
        self._sync_circuits()
        now = asyncio.get_running_loop().time()
        self._rtcp_link.send(
            self._rtcp_transport,
            self._srtp,
            time.time(),
            now,
            self._clock.timestamp_at(now) & 0xFFFFFFFF,
            bye=bye,
        )

    async def _run_rtcp(self) -> None:
        # RFC 3550 6.2: the first report after half an interval, then
        # randomised intervals so that sessions do not synchronise
        await asyncio.sleep(self.rtcp_interval * random.uniform(0.25, 0.75))
        while not self._closed:
            self._send_rtcp()
            await asyncio.sleep(self.rtcp_interval * random.uniform(0.5, 1.5))

    def _buffer(
        self,
        ssrc: int,
        timestamp: int,
        marker: bool,
        samples: npt.NDArray[np.int16],
        now: float,
        continues: bool,
    ) -> None:
        """
        Into the jitter buffer, then play what is ready. ``timestamp`` is in
        samples of the buffer's rate; ``now``: the arrival; ``continues``: the
        packet is the next in sequence. A packet of another ptime (10, 30
        ms...) is cut into 20 ms frames there (its FrameAssembler: on the
        stream's grid, in any arrival order).
        """
        self._jitter.put(ssrc, timestamp, samples, now, marker, continues)
        self._play(now)

    def _play(self, now: float) -> None:
        """Deliver what the buffer in use releases at ``now``; a timer for its next deadline."""
        if self._closed:
            return
        if self._passing:
            detect = self._telephone_event_pt is None and self.on_dtmf is not None
            for packet in self._packets.pop(now):
                if packet is None:
                    self._queue.put(Gap())
                    continue
                if detect:
                    self._detect_passed(packet.payload)
                self._queue.put(packet)
            deadline = self._packets.deadline
        else:
            for frame in self._jitter.pop(now):
                if frame is None:
                    self._queue.put(Gap())  # lost beyond concealment: skipped
                else:
                    self._deliver(frame)
            deadline = self._jitter.deadline
        if deadline is None:
            self._playout_timer.cancel()
        elif self._playout_timer.when != deadline:
            self._playout_timer.at(deadline)

    def _stop_playout(self) -> None:
        self._release_circuits()
        self._playout_timer.cancel()
        self._jitter.reset()
        self._packets.reset()

    def _deliver(self, samples: npt.NDArray[np.int16]) -> None:
        """A frame at the jitter buffer's rate: DTMF detection, then to read()."""
        self._detect_dtmf(samples)
        if self._playout_resampler is not None:
            samples = self._playout_resampler.process(samples)
        self._queue.put(samples)

    def _detect_passed(self, payload: bytes) -> None:
        """
        In-band DTMF in a frame relayed undecoded: decoded for the detector only,
        in playout order (as released by the playout buffer: a reordered or
        duplicated packet fed as it arrived broke a tone in two). A corrupt
        packet has nothing to detect; the far end's decoder conceals it.
        """
        codec = self._codec
        if codec is None:
            return
        try:
            samples = self._decoder(self._codec_pt, codec)(payload)
        except (OpusError, ValueError) as exc:
            logger.debug("%s packet not decoded: %s", codec.name, exc)
            return
        self.frames_decoded += 1
        self._detect_dtmf(samples)

    def _detect_dtmf(self, samples: npt.NDArray[np.int16]) -> None:
        """In-band DTMF in received audio at the jitter buffer's rate, without telephone-event."""
        if self._telephone_event_pt is None and self._codec is not None and self.on_dtmf:
            # no telephone-event: the digits, if any, are in the audio
            if self._dtmf_detector is None:
                self._dtmf_detector = DtmfDetector(SAMPLE_RATE)
            narrow = samples
            if self._detect_resampler is not None:
                narrow = self._detect_resampler.process(samples)
            for digit in self._dtmf_detector.process(narrow):
                self._dtmf_received(digit)

    async def close(self) -> None:
        if self._closed:
            return
        self._release_circuits()
        self._closed = True
        self._queue.close()
        self._playout_timer.cancel()
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        if self._rtcp_task is not None:
            self._rtcp_task.cancel()
            self._send_rtcp(bye=True)
        self._fill_timer.cancel()
        self._flush_timer.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._rtcp_transport is not None:
            self._rtcp_transport.close()
