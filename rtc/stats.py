"""
Per-leg media statistics: the receiver side of RFC 3550 (sequence tracking,
loss, interarrival jitter, report blocks), round-trip time from LSR/DLSR, and
an estimated MOS from the ITU-T G.107 E-model. Sans-I/O: times are passed in.
"""

from dataclasses import dataclass

from .rtcp import RtcpReceptionReport
from .rtp import seq_diff, ts_diff

__all__ = [
    "LegStats",
    "ReceiverStatistics",
    "VideoStats",
    "mos_from_r",
    "r_factor",
    "estimate_mos",
]

MAX_DROPOUT = 3000
MAX_MISORDER = 100
# The packet in sequence this much earlier (seconds) than the one before says
# its timestamp jumped ahead: a sender can be that early only after being as
# late, which the jitter counted already.
MAX_EARLY = 0.2
# Later than the one before by this much (seconds) and stamped behind it, its
# timestamp jumped back; only then is the timestamp looked at (a step back
# smaller than this is no more than jitter of that size).
MIN_BACK = 0.01


@dataclass
class LegStats:
    """
    What one leg measured. Local counters are exact; ``remote_*`` and
    ``rtt_ms`` come from the peer's RTCP reports (None until one arrived).
    """

    codec: str | None = None
    packets_sent: int = 0
    bytes_sent: int = 0  # RTP payload octets, as RTCP counts them
    packets_received: int = 0
    bytes_received: int = 0
    packets_lost: int = 0  # by the far end toward us (our receive side)
    fraction_lost: float = 0.0  # 0..1, cumulative
    jitter_ms: float = 0.0  # RFC 3550 interarrival jitter of what we receive
    remote_packets_lost: int | None = None  # of what we sent, as the peer reports
    remote_fraction_lost: float | None = None  # 0..1, since its previous report
    remote_jitter_ms: float | None = None
    rtt_ms: float | None = None
    mos: float | None = None  # estimated from our receive side and the RTT


@dataclass
class VideoStats:
    """
    What one leg's video stream counted, for call records. Packets and bytes
    are RTP (bytes: payload octets, as RTCP counts them); frames are whole
    encoded frames handed on or received. Loss, jitter and RTT are None
    where the leg has no measure of them (no RTCP report yet).
    """

    codec: str | None = None  # "VP8", "H264"
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    frames_lost: int | None = None  # received frames given up as incomplete
    keyframe_requests_sent: int = 0  # PLI (with FIR where negotiated) to the peer
    keyframe_requests_received: int = 0  # PLI/FIR from the peer
    packets_lost: int | None = None  # of what we receive
    jitter_ms: float | None = None  # of what we receive
    remote_packets_lost: int | None = None  # of what we send, as the peer reports
    remote_fraction_lost: float | None = None  # 0..1, since its previous report
    rtt_ms: float | None = None


class ReceiverStatistics:
    """
    The RTP receiver state of RFC 3550 appendix A.1, A.3 and A.8 for the
    current source (what a report block says, and what ``ssrc`` and
    ``max_seq`` name), and totals over every source the session received
    from (``total_*``, what the leg's statistics count: an SSRC change
    starts the per-source state over but loses nothing that was received).
    """

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        # what the sources before the current one received and expected
        self._earlier_packets = 0
        self._earlier_bytes = 0
        self._earlier_expected = 0
        self._new_source(0)

    @property
    def clock_rate(self) -> int:
        return self._clock_rate

    @clock_rate.setter
    def clock_rate(self, rate: int) -> None:
        # a leg learns its rate at negotiation (Opus: 48000, after 8000):
        # the bounds of a timestamp jump, in timestamp units, follow it
        self._clock_rate = rate
        self._early = MAX_EARLY * rate
        self._late = MIN_BACK * rate

    def _new_source(self, sequence_number: int) -> None:
        self.packets_received = 0
        self.bytes_received = 0
        self._jitter = 0.0  # in timestamp units
        self._last_timestamp: int | None = None
        self._expected_prior = 0
        self._received_prior = 0
        # the expected count of this source's sequences before a resync
        self._expected_before = 0
        self._bad_seq: int | None = None  # A.1: the stray's sequence number + 1
        self._bad_size = 0
        self._resync(sequence_number)

    def _resync(self, sequence_number: int) -> None:
        """A.1's init_seq: the source's sequence numbers start over here."""
        self._base_seq = self._max_seq = sequence_number
        self._cycles = 0
        self._transit: float | None = None  # a restarted sender's timing is not the old one's

    def _advance(self, sequence_number: int) -> None:
        """A packet ahead of ``max_seq`` (by less than MAX_DROPOUT)."""
        if sequence_number < self._max_seq:
            self._cycles += 1 << 16
        self._max_seq = sequence_number

    def add(
        self, ssrc: int, sequence_number: int, timestamp: int, arrival: float, size: int
    ) -> bool:
        """
        Account for a packet; ``arrival`` in seconds on any steady clock.
        True when it continues its source's stream: its sequence number is the
        one after the highest received (what a jitter buffer needs to tell a
        timestamp jump from a late packet).
        """
        continues = False
        if ssrc != self.ssrc:
            # a new source (e.g. the PBX switched streams): its own report
            # block from scratch, the session's totals carried on
            if self.ssrc is not None:
                self._earlier_packets += self.packets_received
                self._earlier_bytes += self.bytes_received
                self._earlier_expected += self.expected
            self.ssrc = ssrc
            self._new_source(sequence_number)
        else:
            # only the packet right after a stray can confirm it (as
            # libwebrtc does): a stray late packet must not leave a trap for
            # a second one
            bad_seq, self._bad_seq = self._bad_seq, None
            delta = seq_diff(sequence_number, self._max_seq)
            if 0 < delta < MAX_DROPOUT:
                self._advance(sequence_number)
                continues = delta == 1
            elif delta <= -MAX_MISORDER or delta >= MAX_DROPOUT:
                if sequence_number != bad_seq:
                    # A.1: one packet far off is probably a stray (a very late
                    # one, a corrupt header): not counted, and nothing reset
                    # that a single packet could wipe out
                    self._bad_seq = (sequence_number + 1) & 0xFFFF
                    self._bad_size = size
                    return False
                # two in sequence: the sender restarted its sequence numbers.
                # Resync from the stray, counted now as its first packet; what
                # was received and expected so far stays, so the jump is
                # counted as neither loss nor gain.
                self._expected_before = self.expected
                self._resync((sequence_number - 1) & 0xFFFF)
                self._advance(sequence_number)
                self.packets_received += 1
                self.bytes_received += self._bad_size
            elif delta == 0:
                return False  # duplicate
        self.packets_received += 1
        self.bytes_received += size

        # A.8: jitter from the change in relative transit time
        transit = arrival * self._clock_rate - timestamp
        if timestamp == self._last_timestamp and self._transit is not None:
            # packets sharing a timestamp (an RFC 4733 event's, all stamped
            # with its start; a video frame's) were not sampled apart: each
            # would add the whole gap since the first as jitter (libwebrtc
            # skips them too). The first one's transit is kept, so that the
            # packet after them is measured against when the timestamp began.
            return continues
        last, self._last_timestamp = self._last_timestamp, timestamp
        previous, self._transit = self._transit, transit
        if previous is None or last is None:
            return continues
        d = transit - previous
        if continues and (d < -self._early or (d > self._late and ts_diff(timestamp, last) < 0)):
            # the next packet, stamped back or far ahead: the sender's timeline
            # jumped (a PBX re-bridging the call keeps SSRC and sequence
            # numbers). Its transit starts over, as a new source's: the jump
            # is not jitter (a jump of seconds read as hundreds of ms of it)
            return continues
        d = abs(d)
        # a timestamp jump (new talk spurt after a gap is fine, a jump is not)
        if d < self._clock_rate * 10:
            self._jitter += (d - self._jitter) / 16
        return continues

    @property
    def jitter_units(self) -> float:
        """The A.8 jitter estimate, in timestamp units."""
        return self._jitter

    @property
    def transit(self) -> float | None:
        """The last packet's relative transit time (A.8), in timestamp units."""
        return self._transit

    def extend(
        self,
        packets: int,
        octets: int,
        sequence_number: int,
        wraps: int,
        timestamp: int,
        transit: float | None,
        jitter: float,
    ) -> None:
        """
        ``packets`` more of the current source, in sequence, counted elsewhere
        (rtc.circuit): the last one's sequence number (``wraps`` times past
        0xFFFF since ``max_seq``) and timestamp, and the A.8 transit and
        jitter as they now stand.
        """
        self.packets_received += packets
        self.bytes_received += octets
        self._cycles += wraps << 16
        self._max_seq = sequence_number
        self._bad_seq = None
        self._last_timestamp = timestamp
        self._transit = transit
        self._jitter = jitter

    @property
    def max_seq(self) -> int:
        """The highest sequence number received (without its cycles)."""
        return self._max_seq

    @property
    def extended_max(self) -> int:
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        """Packets the current source sent, by its sequence numbers (over resyncs)."""
        if self.ssrc is None:
            return 0
        return self._expected_before + self.extended_max - self._base_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.packets_received

    @property
    def total_packets_received(self) -> int:
        """Packets received from every source of the session."""
        return self._earlier_packets + self.packets_received

    @property
    def total_bytes_received(self) -> int:
        return self._earlier_bytes + self.bytes_received

    @property
    def total_expected(self) -> int:
        return self._earlier_expected + self.expected

    @property
    def total_lost(self) -> int:
        """Packets lost from every source of the session (negative with duplicates)."""
        return self.total_expected - self.total_packets_received

    @property
    def jitter(self) -> float:
        """Interarrival jitter in seconds."""
        return self._jitter / self.clock_rate

    def report(self, lsr: int = 0, dlsr: int = 0) -> RtcpReceptionReport | None:
        """A report block for the next RR/SR (None before any packet)."""
        if self.ssrc is None:
            return None
        expected = self.expected
        interval_expected = expected - self._expected_prior
        interval_received = self.packets_received - self._received_prior
        self._expected_prior, self._received_prior = expected, self.packets_received
        interval_lost = interval_expected - interval_received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(255, (interval_lost << 8) // interval_expected)
        lost = max(-(1 << 23), min(self.lost, (1 << 23) - 1))
        return RtcpReceptionReport(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self._jitter),
            lsr=lsr,
            dlsr=dlsr,
        )


def r_factor(
    loss: float, jitter_ms: float, rtt_ms: float | None, ie: float = 0.0, bpl: float = 25.1
) -> float:
    """
    The E-model transmission rating R (ITU-T G.107) with default values for
    everything but delay and loss: R = 93.2 - Id - Ie,eff. The one-way delay
    is half the RTT plus a jitter buffer of twice the jitter plus 10 ms of
    processing (the usual simplification of Cole and Rosenbluth). ``ie`` and
    ``bpl`` are the codec's impairment and loss robustness (G.113: G.711 with
    PLC 0 / 25.1).
    """
    delay = (rtt_ms or 0.0) / 2 + 2 * jitter_ms + 10.0
    idd = 0.024 * delay
    if delay > 177.3:
        idd += 0.11 * (delay - 177.3)
    ppl = 100.0 * max(0.0, min(1.0, loss))
    ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl)
    return 93.2 - idd - ie_eff


def mos_from_r(r: float) -> float:
    """G.107 annex B: the MOS (conversational quality) estimated from R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


def estimate_mos(loss: float, jitter_ms: float, rtt_ms: float | None) -> float:
    return round(mos_from_r(r_factor(loss, jitter_ms, rtt_ms)), 2)
