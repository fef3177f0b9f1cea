"""
DTMF as RTP events (RFC 4733): the telephone-event payload as a parse/bytes
dataclass, the packet schedule of one digit (segmented past the 16-bit
duration, RFC 4733 2.5.1.3), and the receiver-side de-duplication. Sans-I/O:
the legs own the clocks and sockets.
"""

from collections import deque
from dataclasses import dataclass
from struct import pack, unpack_from
from typing import NamedTuple

from .rtp import ts_diff

__all__ = [
    "DIGITS",
    "MAX_DURATION",
    "DtmfEventReceiver",
    "EventPacket",
    "TelephoneEvent",
    "digit_to_event",
    "event_schedule",
    "event_to_digit",
    "segment_of",
]

# RFC 4733 section 3.2: events 0-15 are the DTMF digits in this order
DIGITS = "0123456789*#ABCD"
DEFAULT_VOLUME = 10  # -dBm0, a typical DTMF level
END_REPEATS = 3  # RFC 4733 2.5.1.4: the end packet is retransmitted
MAX_DURATION = 0xFFFF  # the 16-bit duration field: 1.365 s at 48 kHz, 8.19 s at 8 kHz
# How far (in event clock samples) a new segment's timestamp may be from where
# RFC 4733 2.5.2.3 puts it (previous segment's timestamp + 0xFFFF) and still
# continue the same key press. libwebrtc starts the new segment at the first
# update past 0xFFFF, up to one update interval (50 ms, at most 60 ms packets)
# late; twice the 60 ms at 48 kHz also survives losing the 0xFFFF report.
SEGMENT_SLACK = 2 * 48000 * 60 // 1000


def digit_to_event(digit: str) -> int:
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"Not a DTMF digit: {digit!r}")
    return index


def event_to_digit(event: int) -> str | None:
    """The digit of a DTMF event code, None for other events (flash, tones)."""
    return DIGITS[event] if 0 <= event < len(DIGITS) else None


@dataclass
class TelephoneEvent:
    """The 4-byte payload of RFC 4733 section 2.3."""

    event: int
    end: bool = False
    volume: int = DEFAULT_VOLUME
    duration: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255:
            raise ValueError("Event must be in 0..255")
        if not 0 <= self.volume <= 63:
            raise ValueError("Volume must be in 0..63")
        if not 0 <= self.duration <= MAX_DURATION:
            raise ValueError("Duration must be in 0..65535")

    @classmethod
    def parse(cls, data: bytes) -> "TelephoneEvent":
        # RFC 4733 2.5.2.3: several events may be stacked; the first is current
        if len(data) < 4:
            raise ValueError("telephone-event payload is shorter than 4 bytes")
        event, e_r_volume, duration = unpack_from("!BBH", data)
        return cls(event, bool(e_r_volume & 0x80), e_r_volume & 0x3F, duration)

    def __bytes__(self) -> bytes:
        return pack("!BBH", self.event, (self.end << 7) | self.volume, self.duration)


class EventPacket(NamedTuple):
    """One packet of a digit's schedule (RFC 4733 2.5.1)."""

    offset: int  # when to send it, in event clock samples from the event start
    timestamp: int  # its RTP timestamp less the event start's: its segment's start
    event: TelephoneEvent
    marker: bool  # the first packet of the event only, not of later segments


def segment_of(elapsed: int) -> int:
    """
    The start of the segment (RFC 4733 2.5.1.3) that reports ``elapsed``
    samples of an event, relative to the event start: a report of exactly
    0xFFFF still belongs to the segment it fills.
    """
    return max(0, elapsed - 1) // MAX_DURATION * MAX_DURATION


def event_schedule(
    digit: str,
    duration: int,
    update_interval: int,
    end_interval: int,
    volume: int = DEFAULT_VOLUME,
) -> list[EventPacket]:
    """
    When to send what for one digit, in samples of the event's clock from the
    start of the event: an update every ``update_interval`` carrying the
    duration so far, then the end packet ``END_REPEATS`` times,
    ``end_interval`` apart. The first packet gets the marker bit; packets
    share the timestamp of the event start (RFC 4733 2.5.1).

    An event longer than the 16-bit duration field (1.365 s at 48 kHz) is
    sent in segments (RFC 4733 2.5.1.3): each segment's last report carries
    0xFFFF without the E bit, the next one's timestamp is the previous
    segment's plus 0xFFFF and its durations count from there, and only the
    final segment ends. The segments together last ``duration``, so audio
    resuming ``duration`` after the start follows the event seamlessly.
    """
    event = digit_to_event(digit)
    duration = max(1, duration)
    # each segment but the last reports its full 0xFFFF before the next begins
    offsets = sorted(
        set(range(update_interval, duration, update_interval))
        | set(range(MAX_DURATION, duration, MAX_DURATION))
    )
    schedule = [
        EventPacket(
            offset,
            segment_of(offset),
            TelephoneEvent(event, False, volume, offset - segment_of(offset)),
            False,
        )
        for offset in offsets
    ]
    last = segment_of(duration)
    schedule += [
        EventPacket(
            duration + i * end_interval,
            last,
            TelephoneEvent(event, True, volume, duration - last),
            False,
        )
        for i in range(END_REPEATS)
    ]
    schedule[0] = schedule[0]._replace(marker=True)
    return schedule


@dataclass
class _KeyPress:
    """The latest key press of one SSRC: its current segment."""

    code: int
    start: int  # RTP timestamp of its current segment
    duration: int  # the longest duration reported for that segment
    ended: bool

    def report(self, event: TelephoneEvent) -> None:
        self.duration = max(self.duration, event.duration)
        self.ended = self.ended or event.end

    def continued_by(self, code: int, timestamp: int) -> bool:
        """
        True when an event at a new timestamp is this press's next segment
        (RFC 4733 2.5.2.3): the same code, at this segment's timestamp plus
        0xFFFF give or take ``SEGMENT_SLACK``. Compared with 0xFFFF rather
        than the duration seen, so losing the reports before the boundary
        does not matter. An ended press has no next segment, unless it ended
        on a full 0xFFFF: libwebrtc puts the E bit on that segment's last
        report too when the press ends in the packet that crosses the
        boundary.
        """
        if code != self.code or (self.ended and self.duration < MAX_DURATION):
            return False
        return abs(ts_diff(timestamp, self.start + MAX_DURATION)) <= SEGMENT_SLACK


class DtmfEventReceiver:
    """
    Turns received telephone-event packets into digits, each exactly once.

    An event is identified by its SSRC, RTP timestamp and code: every update
    and retransmitted end packet of one key press shares them, so the first
    packet seen, whichever it is, reports the digit and the rest are ignored.
    The code is part of it because a peer that does not advance the
    timestamp between digits still sends two digits. A press longer than the
    16-bit duration comes in segments with new timestamps (RFC 4733 2.5.1.3,
    libwebrtc past 1.365 s at 48 kHz); a segment that continues the SSRC's
    latest press (``_KeyPress.continued_by``) is not a new digit.
    """

    def __init__(self, remembered: int = 32) -> None:
        self._remembered = remembered
        self._seen: deque[tuple[int, int, int]] = deque(maxlen=remembered)
        self._latest: dict[int, _KeyPress] = {}  # by SSRC, oldest first

    def feed(self, ssrc: int, timestamp: int, payload: bytes) -> str | None:
        try:
            event = TelephoneEvent.parse(payload)
        except ValueError:
            return None
        latest = self._latest.get(ssrc)
        if latest is not None and latest.code == event.event and latest.start == timestamp:
            # the current segment's next report: it may carry the 0xFFFF or
            # the E bit the next segment is judged by
            latest.report(event)
            return None
        key = (ssrc, timestamp, event.event)
        if key in self._seen:
            # a late report of an earlier press or segment
            return None
        self._seen.append(key)
        continued = latest is not None and latest.continued_by(event.event, timestamp)
        self._latest.pop(ssrc, None)
        self._latest[ssrc] = _KeyPress(event.event, timestamp, event.duration, event.end)
        if len(self._latest) > self._remembered:
            # a peer changing SSRCs all the time must not grow this
            del self._latest[next(iter(self._latest))]
        return None if continued else event_to_digit(event.event)
