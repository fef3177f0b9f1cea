"""
RFC 4733 telephone-event on aiortc's audio transceiver, which aiortc 1.16
does not support: the browser's RTCDTMFSender needs it negotiated, and its
events must not reach aiortc's audio decoder.

- ``register_telephone_event()`` adds telephone-event/48000 and /8000 to the
  codecs aiortc offers and accepts (its module-level codec table; aiortc
  itself is not modified), so they can be put in codec preferences.
- ``TransceiverDtmf`` hooks one transceiver: received packets with a
  telephone-event payload type are taken out before aiortc's receiver (jitter
  buffer, decoder) sees them, and digits we send replace outgoing audio
  packets on their way to SRTP. Replacing keeps aiortc's sequence numbers and
  SSRC (RFC 4733 2.5.1.1: events take the place of the audio), which
  injecting separate packets could not: aiortc's sequence counter is private
  to its sender loop.
"""

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpCodecParameters, RTCRtpTransceiver
from aiortc.codecs import CODECS

from .dtmf import MAX_DURATION, DtmfEventReceiver, TelephoneEvent, digit_to_event
from .rtp import RtpPacket, is_rtcp

__all__ = ["TELEPHONE_EVENT", "TransceiverDtmf", "register_telephone_event"]

logger = logging.getLogger(__name__)

TELEPHONE_EVENT = "audio/telephone-event"
# payload types as Chrome offers them; answers take the offerer's. The two
# must differ in their parameters: aiortc matches codec preferences by MIME
# type and parameters only, so with equal ones it would pick the first twice.
TELEPHONE_EVENT_CODECS = (
    RTCRtpCodecParameters(
        mimeType=TELEPHONE_EVENT,
        clockRate=48000,
        channels=1,
        payloadType=110,
        parameters={"0-15": None},
    ),
    RTCRtpCodecParameters(
        mimeType=TELEPHONE_EVENT,
        clockRate=8000,
        channels=1,
        payloadType=126,
        parameters={"0-16": None},
    ),
)
END_REPEATS = 3
GAP_PACKETS = 3  # audio packets between two digits, so that repeats stay distinct
MAX_QUEUED_DIGITS = 64


def register_telephone_event() -> None:
    """Let aiortc negotiate telephone-event (idempotent, process-wide)."""
    audio = CODECS["audio"]
    for codec in TELEPHONE_EVENT_CODECS:
        if not any(
            c.mimeType.lower() == TELEPHONE_EVENT and c.clockRate == codec.clockRate for c in audio
        ):
            audio.append(codec)


@dataclass
class _Digit:
    event: int
    duration_ms: int
    start: int | None = None  # RTP timestamp of the event
    segment: int = 0  # start of the current segment (RFC 4733 2.5.1.3), from ``start``
    ends_sent: int = 0


class TransceiverDtmf:
    """DTMF in and out of one aiortc audio transceiver."""

    def __init__(self, transceiver: RTCRtpTransceiver, on_packet: Callable[[], None]) -> None:
        self.on_dtmf: Callable[[str], None] | None = None
        self._transceiver = transceiver
        self._on_packet = on_packet
        self._receiver = DtmfEventReceiver()
        self._digits: deque[_Digit] = deque()
        self._gap_left = 0

        receiver = transceiver.receiver
        self._handle_rtp = receiver._handle_rtp_packet
        # instance attributes shadow the methods aiortc calls
        receiver._handle_rtp_packet = self._receive  # type: ignore[method-assign]
        sender = transceiver.sender
        self._send_rtp: Callable[[bytes], Awaitable[None]] = sender.transport._send_rtp
        sender.transport._send_rtp = self._send  # type: ignore[method-assign]
        # BUNDLE moves the sender onto the first m-line's transport, which is
        # not ours when the browser's offer puts another m-line (video) first
        self._set_transport = sender.setTransport
        sender.setTransport = self._transport_changed  # type: ignore[method-assign]

    def _transport_changed(self, transport: Any) -> None:
        self._set_transport(transport)
        if getattr(transport._send_rtp, "__self__", None) is not self:
            self._send_rtp = transport._send_rtp
            transport._send_rtp = self._send

    def _event_codec(self, clock_rate: int | None = None) -> RTCRtpCodecParameters | None:
        for codec in self._transceiver._codecs:
            if codec.mimeType.lower() == TELEPHONE_EVENT and (
                clock_rate is None or codec.clockRate == clock_rate
            ):
                return codec
        return None

    @property
    def negotiated(self) -> bool:
        """True when telephone-event at the clock rate of our audio codec was negotiated."""
        codecs = self._transceiver._codecs
        return bool(codecs) and self._event_codec(codecs[0].clockRate) is not None

    def send(self, digits: str, duration_ms: int) -> None:
        for digit in digits:
            digit_to_event(digit)
        if len(self._digits) + len(digits) > MAX_QUEUED_DIGITS:
            raise ValueError("Too many DTMF digits queued")
        self._digits.extend(_Digit(digit_to_event(d), duration_ms) for d in digits)

    # receiving

    async def _receive(self, packet: Any, arrival_time_ms: int) -> None:
        self._on_packet()
        if any(
            c.payloadType == packet.payload_type and c.mimeType.lower() == TELEPHONE_EVENT
            for c in self._transceiver._codecs
        ):
            if self._transceiver.receiver._enabled:
                self.receive_event(packet.ssrc, packet.timestamp, packet.payload)
            return
        await self._handle_rtp(packet, arrival_time_ms)

    def receive_event(self, ssrc: int, timestamp: int, payload: bytes) -> None:
        """A received telephone-event payload (the leg's direct receive path calls this)."""
        digit = self._receiver.feed(ssrc, timestamp, payload)
        if digit is not None and self.on_dtmf is not None:
            self.on_dtmf(digit)

    @property
    def sending(self) -> bool:
        """True while digits are queued: outgoing audio packets go through ``replace()``."""
        return bool(self._digits)

    def replace(self, data: bytes) -> bytes:
        """An outgoing RTP packet (plain), replaced by an event packet while digits play."""
        return self._replace(data) if self._digits else data

    # sending

    async def _send(self, data: bytes) -> None:
        if self._digits and not is_rtcp(data):
            data = self._replace(data)
        await self._send_rtp(data)

    def _replace(self, data: bytes) -> bytes:
        codecs = self._transceiver._codecs
        if not codecs:
            return data
        audio = codecs[0]
        event_codec = self._event_codec(audio.clockRate)
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return data
        if packet.payload_type != audio.payloadType:
            return data
        if event_codec is None or event_codec.payloadType is None:
            logger.info("DTMF dropped: telephone-event/%d not negotiated", audio.clockRate)
            self._digits.clear()
            return data

        digit = self._digits[0]
        if digit.start is None:
            if self._gap_left > 0:
                self._gap_left -= 1
                return data
            digit.start = packet.timestamp
            packet.marker = True
        else:
            packet.marker = False
        # this packet's audio is the tone's continuation: it covers up to the
        # next packet, one frame (20 ms) further
        frame = audio.clockRate * 20 // 1000
        target = audio.clockRate * digit.duration_ms // 1000
        elapsed = min(target, ((packet.timestamp - digit.start) & 0xFFFFFFFF) + frame)
        packet.payload_type = event_codec.payloadType
        reported = elapsed - digit.segment
        if reported > MAX_DURATION or (reported == MAX_DURATION and elapsed < target):
            # past the 16-bit duration (1.365 s at 48 kHz): this packet reports
            # the segment's full 0xFFFF without the E bit, and the next ones a
            # new segment timestamped 0xFFFF later, counting from there
            packet.timestamp = (digit.start + digit.segment) & 0xFFFFFFFF
            packet.payload = bytes(TelephoneEvent(digit.event, duration=MAX_DURATION))
            digit.segment += MAX_DURATION
            return bytes(packet)
        end = elapsed >= target
        if end:
            digit.ends_sent += 1
        packet.timestamp = (digit.start + digit.segment) & 0xFFFFFFFF
        # (never negative, should the audio timestamps ever step back)
        packet.payload = bytes(TelephoneEvent(digit.event, end, duration=max(0, reported)))
        if digit.ends_sent >= END_REPEATS:
            self._digits.popleft()
            self._gap_left = GAP_PACKETS
        # the header extensions (mid, audio level) are kept as they were
        return bytes(packet)
