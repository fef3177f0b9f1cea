"""
DTMF as RTP events (RFC 4733): the telephone-event payload as a parse/bytes
dataclass, the packet schedule of one digit, and the receiver-side
de-duplication. Sans-I/O: the legs own the clocks and sockets.
"""

from collections import deque
from dataclasses import dataclass
from struct import pack, unpack_from

__all__ = [
    "DIGITS",
    "DtmfEventReceiver",
    "TelephoneEvent",
    "digit_to_event",
    "event_packets",
    "event_to_digit",
]

# RFC 4733 section 3.2: events 0-15 are the DTMF digits in this order
DIGITS = "0123456789*#ABCD"
DEFAULT_VOLUME = 10  # -dBm0, a typical DTMF level
END_REPEATS = 3  # RFC 4733 2.5.1.4: the end packet is retransmitted
MAX_DURATION = 0xFFFF


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


def event_packets(
    digit: str,
    duration: int,
    update_interval: int,
    end_interval: int,
    volume: int = DEFAULT_VOLUME,
) -> list[tuple[int, TelephoneEvent]]:
    """
    When to send what for one digit, in samples of the event's clock from the
    start of the event: an update every ``update_interval`` carrying the
    duration so far, then the end packet ``END_REPEATS`` times,
    ``end_interval`` apart. The first packet gets the marker bit; all share
    the timestamp of the event start (RFC 4733 2.5.1).
    """
    event = digit_to_event(digit)
    duration = max(1, min(duration, MAX_DURATION))
    schedule = [
        (offset, TelephoneEvent(event, False, volume, offset))
        for offset in range(update_interval, duration, update_interval)
    ]
    schedule += [
        (duration + i * end_interval, TelephoneEvent(event, True, volume, duration))
        for i in range(END_REPEATS)
    ]
    return schedule


class DtmfEventReceiver:
    """
    Turns received telephone-event packets into digits, each exactly once.

    An event is identified by its RTP timestamp (and SSRC): every update and
    retransmitted end packet of one key press shares it, so the first packet
    seen, whichever it is, reports the digit and the rest are ignored.
    """

    def __init__(self, remembered: int = 32) -> None:
        self._seen: deque[tuple[int, int]] = deque(maxlen=remembered)

    def feed(self, ssrc: int, timestamp: int, payload: bytes) -> str | None:
        try:
            event = TelephoneEvent.parse(payload)
        except ValueError:
            return None
        key = (ssrc, timestamp)
        if key in self._seen:
            return None
        self._seen.append(key)
        return event_to_digit(event.event)
