"""
The steady state of one direction of a pass-through call, relayed in one step.

MediaBridge relays a same-codec call's payloads undecoded, and its express
way (rtc.ports.PassThroughPort) already hands each in-order packet from the
receiving leg's datagram callback to the sending leg. Each packet still goes
through both legs' general paths: some thirty Python calls over a dozen
objects (the legs, their latch, statistics, playout buffer and send clock,
aiortc's transceiver, sender and DTLS transport) that decide nothing while
the stream is steady, and with hundreds of calls each of those objects is out
of the CPU caches by the time the call's next packet comes. That is most of
what a pass-through call costs (bench/README.md, rounds 9-11).

A ``Circuit`` is what is left once the stream is steady: one small object
that holds what both legs would have looked up (the expected SSRC, payload
type, next sequence number and timestamp; the SRTP contexts; the outgoing
header, sequence number and timestamp; the socket's ``sendto`` and address)
and does, per packet, only what a relay must: check that the packet continues
the stream exactly, unprotect it, count it (RFC 3550 statistics: packets,
octets, interarrival jitter), stamp it with the sending leg's next sequence
number and timestamp, protect it, send it.

The bridge engages a circuit once a direction has gone ENGAGE_AFTER packets
the express way in a row (``PushRelay``): the receiving leg describes its
side (``circuit_inbound``), the sending leg its own (``circuit_outbound``),
and either may decline (hold, DTMF, a codec not sent this way, packets held
behind a gap, in-band DTMF detection...). While engaged, the receiving leg
offers each datagram to ``take`` before its own path. Anything that does not
continue the stream exactly is declined; when it is of the stream all the
same (``concerns``: a marker, another payload type such as RFC 4733 events,
a lost or reordered packet, the stream from another address) the circuit is
released first, while RTCP and other streams leave it engaged. A leg whose
state changes (a negotiation, hold, DTMF, audio
written to it, its latch moving, close) calls ``release``: the legs' own
state is brought up to date (``sync``) and the circuit is gone, so that
their general path goes on as if it had handled every packet itself.

What the legs count or report in the meantime (counters, RTCP statistics,
the send clocks' position, the playout and reorder buffers' next packet,
aiortc's sender and receiver statistics) is handed back by ``sync``, which
the legs call before they read any of it: from their filler timer (every
SYNC_EVERY while a stream flows), for ``stats()`` and RTCP reports. aiortc's
own RTCP tasks read its statistics between two syncs: up to SYNC_EVERY old.

Sans-I/O apart from the callables it is given (``unprotect``, ``protect``,
``sendto``) and ``time.monotonic`` for the arrival times that RFC 3550's
jitter wants (rtc.stats, as RtpLeg does).
"""

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import TYPE_CHECKING, Any, Protocol

from .opus import packet_samples
from .srtp import native
from .udp import LOOP_UDP

__all__ = [
    "ENGAGE_AFTER",
    "SYNC_EVERY",
    "Circuit",
    "CircuitLeg",
    "NATIVE",
    "Inbound",
    "Outbound",
    "PyCircuit",
    "tap",
]

# packets relayed the express way in a row before a circuit is engaged
ENGAGE_AFTER = 50
# seconds between the syncs the legs' filler ticks make while a stream flows:
# their ticks (every 250 ms) in between only check that it still does. What
# aiortc's RTCP tasks report is that old at most, and consistent: the counts
# and the NTP / RTP timestamps of one sync describe the same packet. Syncing
# on every tick was ~5 % of the CPU at 600 pass-through calls (bench/README.md,
# round 13).
SYNC_EVERY = 1.0
_SEQUENCE_TIMESTAMP_SSRC = Struct("!HII")
_HEADER = Struct("!BBHII")
# Opus TOC bytes of one 20 ms packet whose duration the first byte tells
# (codes 0-2: RFC 6716 3.2); a code 3 packet goes the general way
OPUS_20MS = frozenset(
    toc for toc in range(256) if toc & 3 != 3 and packet_samples(bytes((toc, 0))) == 960
)


def _opus_20ms(payload: bytes) -> bool:
    """One 20 ms Opus packet: by its TOC byte, or (code 3, e.g. padded CBR) its frame count."""
    if not payload:
        return False
    if payload[0] in OPUS_20MS:
        return True
    try:
        return payload[0] & 3 == 3 and packet_samples(payload) == 960
    except ValueError:
        return False


class CircuitLeg(Protocol):
    """What a leg offers a circuit: where it keeps it, and its write-back."""

    _circuit_in: "Circuit | None"
    _circuit_out: "Circuit | None"

    def circuit_synced_in(self, circuit: "Circuit") -> None: ...

    def circuit_synced_out(self, circuit: "Circuit") -> None: ...


@dataclass(frozen=True, slots=True)
class Inbound:
    """The receiving leg's side: the packet that continues its stream next."""

    ssrc: int
    payload_type: int
    sequence_number: int
    timestamp: int
    step: int  # timestamp units per packet
    frame: int  # payload bytes of a 20 ms packet; 0: Opus (its TOC says)
    clock_rate: int  # for the jitter, in timestamp units
    unprotect: Callable[[bytes], bytes] | None
    peer: Any = None  # only datagrams from there (RTP's latch); None: any
    # RFC 3550 A.8 as the leg's statistics stand (timestamp units): the
    # estimate goes on from there rather than from nothing
    jitter: float = 0.0
    transit: float | None = None
    # the datagram transport the stream arrives on, whose protocol's callback
    # is a tap: with rtc._relay its socket is read in the collector's pauses
    receiver: Any = None


@dataclass(frozen=True, slots=True)
class Outbound:
    """The sending leg's side: the header of its next packet, and how to send it."""

    first: int  # byte 0 (version, extension bit)
    payload_type: int
    ssrc: int
    sequence_number: int
    timestamp: int
    step: int
    extension: bytes  # header extension after the fixed header (e.g. aiortc's mid)
    protect: Callable[[bytes], bytes] | None
    sendto: Callable[[bytes, Any], None]
    address: Any
    route: Any = None  # what the sending leg checks is still its way to send


class _Relay:
    """
    A circuit's per-packet step in Python: the reference that rtc._relay.Relay
    (the same step in C) follows, and what runs where that is not built.
    """

    __slots__ = (
        "address",
        "clock_rate",
        "extension",
        "frame",
        "in_octets",
        "jitter",
        "last",
        "octets",
        "out_first",
        "out_octets",
        "out_payload_type",
        "out_sequence",
        "out_ssrc",
        "out_step",
        "out_timestamp",
        "packets",
        "payload_type",
        "peer",
        "protect",
        "sendto",
        "sequence_number",
        "ssrc",
        "step",
        "timestamp",
        "transit",
        "unprotect",
        "wraps",
    )

    address: Any
    clock_rate: int
    extension: bytes
    frame: int
    in_octets: int
    jitter: float
    last: float
    octets: int
    out_first: int
    out_octets: int
    out_payload_type: int
    out_sequence: int
    out_ssrc: int
    out_step: int
    out_timestamp: int
    packets: int
    payload_type: int
    peer: Any
    protect: Callable[[bytes], bytes] | None
    sendto: Callable[[bytes, Any], None]
    sequence_number: int
    ssrc: int
    step: int
    timestamp: int
    transit: float | None
    unprotect: Callable[[bytes], bytes] | None
    wraps: int

    def take(self, data: bytes, addr: Any = None) -> bool:
        """
        Relay a datagram that continues the stream exactly (True); False, with
        nothing done, for anything else: the leg's own path handles it (and
        releases the circuit). A packet that fails SRTP is dropped (True), as
        the leg would drop it.
        """
        if (
            len(data) < 12
            or data[1] != self.payload_type
            or (data[0] & 0xEF) != 0x80  # version 2, no padding or CSRC
            or (self.peer is not None and addr != self.peer)
        ):
            return False
        sequence_number, timestamp, ssrc = _SEQUENCE_TIMESTAMP_SSRC.unpack_from(data, 2)
        if (
            sequence_number != self.sequence_number
            or timestamp != self.timestamp
            or ssrc != self.ssrc
        ):
            return False
        size = len(data)
        unprotect = self.unprotect
        if unprotect is not None:
            try:
                data = unprotect(data)
            except Exception:
                return True  # forged or replayed: dropped, as the leg would
        # a header extension's length word missing (too short) leaves no payload
        payload = data[12:] if data[0] == 0x80 else data[16 + 4 * int.from_bytes(data[14:16]) :]
        frame = self.frame
        if (len(payload) != frame) if frame else not _opus_20ms(payload):
            # not one 20 ms frame: a change of packet time, for the leg's own path
            if unprotect is None:
                return False
            # already unprotected (SRTP would call a second time a replay):
            # lost, and the leg's path takes the stream from the next packet
            self.release()
            return True
        self.sequence_number = (sequence_number + 1) & 0xFFFF
        if sequence_number == 0:
            self.wraps += 1  # past 0xFFFF (RFC 3550 A.1's cycles)
        self.timestamp = (timestamp + self.step) & 0xFFFFFFFF
        # RFC 3550 A.8, as rtc.stats.ReceiverStatistics
        now = time.monotonic()
        transit = now * self.clock_rate - timestamp
        previous = self.transit
        if previous is not None:
            d = transit - previous
            if d < 0:
                d = -d
            if d < self.clock_rate * 10:  # not across a timestamp wrap
                self.jitter += (d - self.jitter) / 16
        self.transit = transit
        self.last = now
        self.packets += 1
        self.octets += len(payload)
        self.in_octets += size
        out_sequence = self.out_sequence
        self.out_sequence = (out_sequence + 1) & 0xFFFF
        out_timestamp = self.out_timestamp
        self.out_timestamp = (out_timestamp + self.out_step) & 0xFFFFFFFF
        packet = (
            _HEADER.pack(
                self.out_first, self.out_payload_type, out_sequence, out_timestamp, self.out_ssrc
            )
            + self.extension
            + payload
        )
        protect = self.protect
        if protect is not None:
            try:
                packet = protect(packet)
            except Exception:
                # too long for SRTP's buffer (no 20 ms frame a real encoder
                # makes): lost, as the legs drop it (RtpLeg._sendto)
                return True
        self.out_octets += len(packet)
        self.sendto(packet, self.address)
        return True

    def release(self) -> None:
        raise NotImplementedError  # the circuit's (_Circuit.release)

    def _bind_native(self, *natives: int) -> bool:
        return False  # nothing native here

    def _unbind_native(self) -> None:
        pass

    def _hold(self, held: bool) -> None:
        pass  # no thread relays it


# the mixin below is typed as what it is mixed with
if TYPE_CHECKING:
    _Step = _Relay
else:
    _Step = object


class _Circuit(_Step):
    """One direction's steady-state relay (see the module docstring)."""

    if not TYPE_CHECKING:
        __slots__ = ()
    _in_leg: CircuitLeg | None
    _out_leg: CircuitLeg | None
    route: Any
    ssrc_bytes: bytes
    synced: float

    def __init__(
        self, in_leg: CircuitLeg, inbound: Inbound, out_leg: CircuitLeg, outbound: Outbound
    ) -> None:
        self._in_leg: CircuitLeg | None = in_leg
        self._out_leg: CircuitLeg | None = out_leg
        self.peer = inbound.peer
        self.ssrc = inbound.ssrc
        self.ssrc_bytes = inbound.ssrc.to_bytes(4, "big")
        self.payload_type = inbound.payload_type
        self.sequence_number = inbound.sequence_number  # the next packet's
        self.timestamp = inbound.timestamp
        self.step = inbound.step
        self.frame = inbound.frame
        self.clock_rate = inbound.clock_rate
        self.unprotect = inbound.unprotect
        self.out_first = outbound.first
        self.out_payload_type = outbound.payload_type
        self.out_ssrc = outbound.ssrc
        self.out_sequence = outbound.sequence_number  # the next packet's
        self.out_timestamp = outbound.timestamp
        self.out_step = outbound.step
        self.extension = outbound.extension
        self.protect = outbound.protect
        self.sendto = outbound.sendto
        self.address = outbound.address
        self.route = outbound.route
        # since the last sync: packets relayed, their payload octets, the
        # datagrams' octets in and out, sequence number wraps received
        self.packets = 0
        self.octets = 0
        self.in_octets = 0
        self.out_octets = 0
        self.wraps = 0
        # RFC 3550 A.8, kept across syncs: the last relative transit time and
        # the jitter (timestamp units); the last arrival (time.monotonic())
        self.transit = inbound.transit
        self.jitter = inbound.jitter
        self.last = 0.0
        self.synced = time.monotonic()  # the last sync
        self._bind_native(
            *native(inbound.unprotect),
            *native(outbound.protect),
            *_socket(self.sendto, self.address),
            *_receiver(inbound.receiver),
        )
        in_leg._circuit_in = self  # type: ignore[assignment]
        out_leg._circuit_out = self  # type: ignore[assignment]

    @property
    def engaged(self) -> bool:
        return self._in_leg is not None

    def concerns(self, data: bytes, addr: Any = None) -> bool:
        """
        Whether a datagram ``take`` declined is of the stream relayed, so that
        the circuit must be released before the leg's path handles it: RTP of
        its SSRC (from anywhere: the latch may move), or from the latched peer
        (another SSRC: the peer switched sources), or where there is no latch,
        of its payload type (a new SSRC). RTCP, another stream bundled on the
        same socket (video) and a stranger's packets leave it engaged.
        """
        if len(data) < 12 or data[0] & 0xC0 != 0x80 or 191 < data[1] < 224:
            return False  # not RTP (STUN, DTLS, RTCP)
        if data[8:12] == self.ssrc_bytes:
            return True
        if self.peer is not None:
            return bool(addr == self.peer)
        return data[1] & 0x7F == self.payload_type

    def arrival(self, loop_now: float) -> float:
        """The last packet's arrival on the clock ``loop_now`` reads (the event loop's)."""
        return loop_now - (time.monotonic() - self.last)

    def due(self, fill_after: float) -> float | None:
        """
        For the sending leg's filler tick: while the stream goes on (a packet
        within ``fill_after``) and the last sync is less than SYNC_EVERY old,
        the seconds until the tick must look again (the last packet plus
        ``fill_after``); None: the tick's whole work is due (a sync, its
        checks, filler when the stream stopped).
        """
        if self.packets:
            now = time.monotonic()
            if now - self.synced < SYNC_EVERY:
                wait = self.last + fill_after - now
                if wait > 0:
                    return wait
        return None

    def sync(self) -> None:
        """Hand what happened since the last sync back to both legs."""
        in_leg, out_leg = self._in_leg, self._out_leg
        if in_leg is None or out_leg is None or self.packets == 0:
            return
        self.synced = time.monotonic()
        # a pass of the collector may come in the legs' Python: rtc._relay's thread
        # then leaves this circuit alone, so that what they read is what is reset
        self._hold(True)
        try:
            # self is a Circuit (PyCircuit or NativeCircuit), which the legs take
            in_leg.circuit_synced_in(self)  # type: ignore[arg-type]
            out_leg.circuit_synced_out(self)  # type: ignore[arg-type]
            self.packets = self.octets = self.in_octets = self.out_octets = self.wraps = 0
        finally:
            self._hold(False)

    def release(self) -> None:
        """Sync, then the legs' own paths take over again."""
        in_leg, out_leg = self._in_leg, self._out_leg
        if in_leg is None or out_leg is None:
            return
        self._unbind_native()  # first: rtc._relay's thread relays it no more
        self.sync()
        self._in_leg = self._out_leg = None
        if in_leg._circuit_in is self:
            in_leg._circuit_in = None
        if out_leg._circuit_out is self:
            out_leg._circuit_out = None


_SLOTS = ("_in_leg", "_out_leg", "route", "ssrc_bytes", "synced")


class PyCircuit(_Circuit, _Relay):
    """A circuit whose per-packet step is Python's (_Relay)."""

    __slots__ = _SLOTS


def _socket(sendto: Any, address: Any) -> tuple[int, int]:
    """
    (descriptor, family) of the plain UDP socket behind a relay's ``sendto``,
    for rtc._relay to send on; (-1, 0) for anything else (a test's fake, a
    TURN transport, whose ``sendto`` wraps the packet): its ``sendto`` then.
    """
    if address is None:
        return -1, 0
    return _descriptor(getattr(sendto, "__self__", None))


def _receiver(transport: Any) -> tuple[int, int, Any]:
    """
    (descriptor, family, tap) of the plain UDP socket a stream arrives on and
    its callback, for rtc._relay to read in the collector's pauses; -1: not.
    """
    fd, family = _descriptor(transport)
    if fd < 0:
        return -1, 0, None
    return fd, family, getattr(transport.get_protocol(), "datagram_received", None)


def _descriptor(transport: Any) -> tuple[int, int]:
    if transport is None or type(transport).__name__ not in _PLAIN_UDP:
        return -1, 0
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return -1, 0
    return sock.fileno(), int(sock.family)


# rtc.udp's, uvloop's and asyncio's own datagram transports
_PLAIN_UDP = LOOP_UDP | {"SocketTransport"}

try:
    from . import _relay
except ImportError:  # not built (no C compiler at install): Python's step
    _relay = None  # type: ignore[assignment]


def tap(leg: CircuitLeg, fallback: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
    """
    A socket's datagram callback for ``leg``: its engaged circuit takes what
    continues the stream, ``fallback`` (the leg's own callback) the rest. With
    rtc._relay a relayed packet never enters Python; without, ``fallback``,
    which offers it to the circuit itself.
    """
    return fallback if _relay is None else _relay.Tap(leg, fallback)


def _collector(phase: str, info: dict[str, int]) -> None:
    """
    gc.callbacks: while a pass of the collector holds the interpreter (150-200
    ms for a full one with 600 calls), rtc._relay's thread relays the engaged
    circuits' streams; what needs Python waits for ``drain`` on the loop.
    """
    relay = _relay
    if relay is None or info["generation"] < PAUSE_GENERATION:
        return
    if phase == "start":
        relay.pause_start()
    elif relay.pause_stop():
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # each tap hands them on with its socket's next datagram
        loop.call_soon(relay.drain)


# the collector's passes from this generation on are relayed through: the
# youngest's are short and frequent, and starting the thread costs ~1 us per
# engaged circuit
PAUSE_GENERATION = 1

# whether circuits take the C step (rtc._relay); False: it was not built
NATIVE = _relay is not None
Circuit = PyCircuit
if _relay is not None and not TYPE_CHECKING:
    _relay.set_opus_20ms(bytes(toc in OPUS_20MS for toc in range(256)), _opus_20ms)
    gc.callbacks.append(_collector)

    class NativeCircuit(_Circuit, _relay.Relay):
        """A circuit whose per-packet step is rtc._relay's, in C."""

        __slots__ = _SLOTS

    Circuit = NativeCircuit
