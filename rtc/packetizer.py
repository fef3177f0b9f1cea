"""
Packets of the SIP peer's packet time: what a=ptime and a=maxptime ask for,
and the stream of 20 ms payloads cut to it.

The media path works in 20 ms frames (rtc.ports) and a peer that says
nothing gets 20 ms packets. A peer's SDP may say otherwise (RFC 4566 section
6, RFC 3264 section 6.1): ``a=ptime`` is the packet time it would like to
receive, a preference; ``a=maxptime`` the most audio a packet to it may carry,
a limit. PBXs, trunks and ATAs configured for 10 or 30 ms say so there, and
some of them play other packet times badly or not at all.

``packet_time`` chooses what we send: the peer's ptime when it is a whole
number of 10 ms steps, else 20 ms; never more than its maxptime, nor more
than ``MAX_PACKET_MS``; never less than 10 ms, the finest grid the leg's 20 ms
frames split into evenly.

``Packetizer`` cuts the stream of a sample-based codec (PCMU, PCMA, G.722:
each payload byte is one unit of the 8000 Hz RTP clock) into packets of that
time: a 20 ms payload into two 10 ms packets, or payloads gathered into 30,
40 or 60 ms ones, each with the RTP timestamp of its first byte. The payloads
come stamped by the leg's send clock (rtc.sendclock): where the timeline
breaks (a timestamp that does not follow on, or a marker: a new talk spurt,
audio after RFC 4733 events or a hold) what is held goes out as it is, a
shorter packet (always allowed: maxptime is an upper bound), so that a packet
never spans a break. So does what is held when no payload has continued it
for ``hold`` (the source stopped: the leg asks for ``deadline``). Sans-I/O:
times are passed in.

Opus frames cannot be cut after encoding; rtc.rtpleg encodes 10 ms Opus
frames where a peer's maxptime is below 20 and keeps 20 ms otherwise.
"""

from .ports import FRAME_MS
from .sendclock import PAUSE

__all__ = ["MAX_PACKET_MS", "MIN_PACKET_MS", "Packet", "Packetizer", "packet_time"]

MIN_PACKET_MS = 10  # the packet times we send are multiples of this
# Beyond 60 ms the wait to fill a packet (here, and already at the peer's
# sender) adds more delay than a conversation tolerates well (ITU-T G.114:
# 150 ms one way in all), and 60 is the largest G.711 packet time PBXs and
# ATAs commonly offer; a peer preferring more gets 60, still within its wish.
MAX_PACKET_MS = 60

# (RTP timestamp, not wrapped; marker; payload)
Packet = tuple[int, bool, bytes]


def packet_time(ptime: int | None, maxptime: int | None) -> int:
    """
    The packet time (ms) we send a peer whose SDP says ``ptime`` and
    ``maxptime`` (None: absent). A ptime that is no multiple of 10 (25) or not
    positive is ignored, as is a maxptime that is not positive; a maxptime
    below 10 counts as 10 (we send nothing finer).
    """
    limit = MAX_PACKET_MS
    if maxptime is not None and maxptime > 0:
        limit = min(limit, max(MIN_PACKET_MS, maxptime - maxptime % MIN_PACKET_MS))
    wanted = FRAME_MS
    if ptime is not None and ptime > 0 and ptime % MIN_PACKET_MS == 0:
        wanted = ptime
    return min(wanted, limit)


class Packetizer:
    """
    Payloads of a sample-based codec, stamped, cut into packets of
    ``packet_bytes`` (see the module docstring).
    """

    __slots__ = ("_held", "_marker", "_pushed", "_timestamp", "hold", "packet_bytes")

    def __init__(self, packet_bytes: int, hold: float = PAUSE) -> None:
        if packet_bytes <= 0:
            raise ValueError("packet_bytes must be positive")
        self.packet_bytes = packet_bytes
        # how long what is held waits for the payload that continues it: as
        # long as the send clock waits before it calls the next one a new talk
        # spurt, so that held audio only goes out short at the end of one
        self.hold = hold
        self._held = b""  # the start of the next packet
        self._timestamp = 0  # of the first byte held (or the next pushed)
        self._marker = False  # the first packet of what is held starts a talk spurt
        self._pushed = 0.0  # when the last payload came

    @property
    def held(self) -> int:
        """Bytes waiting for the rest of their packet."""
        return len(self._held)

    @property
    def deadline(self) -> float | None:
        """When what is held goes out short (``flush``) unless continued; None: nothing held."""
        return self._pushed + self.hold if self._held else None

    def push(self, timestamp: int, marker: bool, payload: bytes, now: float) -> list[Packet]:
        """
        A payload whose first byte has RTP timestamp ``timestamp`` (marker:
        it starts a talk spurt), sent at ``now``: the packets to send now, in
        order (none while a packet is still filling).
        """
        packets: list[Packet] = []
        held = self._held
        if held and (marker or timestamp != self._timestamp + len(held)):
            # the timeline broke: what came before goes out on its own
            packets.append(self._take(held, len(held)))
            held = b""
        if held:
            data = held + payload
        else:
            data = payload
            self._timestamp = timestamp
            self._marker = marker
        size = self.packet_bytes
        while len(data) >= size:
            packets.append(self._take(data, size))
            data = data[size:]
        self._held = data
        self._pushed = now
        return packets

    def flush(self) -> Packet | None:
        """What is held, as one short packet (None: nothing held)."""
        held = self._held
        if not held:
            return None
        self._held = b""
        return self._take(held, len(held))

    def _take(self, data: bytes, size: int) -> Packet:
        """The first ``size`` bytes of ``data`` (which starts at the held timestamp) as a packet."""
        packet = (self._timestamp, self._marker, data[:size])
        self._timestamp += size  # one byte per RTP clock unit
        self._marker = False
        return packet
