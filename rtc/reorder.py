"""
The browser -> SIP direction's packet order: ``ReorderBuffer`` passes each
packet on the moment it arrives in order, and waits only behind a gap in the
sequence numbers, for as long as reordering on the path has been seen to
need.

There is no playout delay this way (the SIP phone's own jitter buffer smooths
arrival times, and the gateway's send clock keeps the timestamps): in a
steady stream ``admit`` says "pass it on, none lost" and holds nothing. Behind
a gap, what may follow depends on the path:

- a packet lost for good: waiting delays the rest of the stream for nothing;
- a packet overtaken by the next one (Wi-Fi retries, links bonded or
  load-balanced per packet): it comes a few milliseconds late. Passed on
  after its successor, it would play out of order (the far leg stamps frames
  as they are sent, and a decoder's state would be wrong); dropped, it is
  lost audio, a fifth of the frames while every fifth packet is overtaken.

So the wait adapts, as the SIP -> browser jitter buffer's delay does
(rtc.jitterbuffer): it starts at nothing (loss costs no delay), grows by a
frame (20 ms) each time a packet given up as lost arrives after all, up to
``max_wait``, and shrinks a frame at a time after SHRINK_AFTER packets in a
row with none late and none waited for. While it is not zero, packets ahead of a gap are held
until the missing ones arrive (then everything in order is passed on at
once) or until the wait is over (then the missing ones are given up as lost,
the gap is reported, and what was held goes on).

Sans-I/O: arrivals come in with their time; ``ready`` collects what is to be
passed on besides the packet ``admit`` answers for (drained by the caller);
``deadline`` is when ``expire(now)`` has something to do.
"""

from typing import Generic, TypeVar

__all__ = ["MAX_SEQUENCE_GAP", "MAX_WAIT", "SHRINK_AFTER", "ReorderBuffer"]

T = TypeVar("T")

FRAME = 0.02  # seconds a frame stands for: the step the wait grows and shrinks by
# lost packets (by sequence number) passed on as a gap; more is a new start.
# The far leg's send clock takes no more of a gap than the time that passed
# (rtc.sendclock), so this only bounds what a sequence jump may claim; a
# smaller bound left the timeline toward SIP 120-290 ms behind its packets for
# good after a burst of 6-11 lost packets.
MAX_SEQUENCE_GAP = 50
# how long a gap may be waited for at most: a packet later than that is lost.
# Every real loss costs this much delay to the packets behind it once the
# path has shown reordering
MAX_WAIT = 0.06
SHRINK_AFTER = 250  # packets (5 s) in order before the wait shrinks by a frame
# a sequence number this far behind the last one passed on is late (or a
# copy), not a new start
BEHIND = 100
# given-up sequence numbers remembered, to tell a late packet from a copy
REMEMBER = 64


class ReorderBuffer(Generic[T]):
    """
    Orders one stream's packets (any duration each) by sequence number, as the
    module docstring describes. Counters: ``late`` (dropped: behind the last
    packet passed on, or a copy), ``given_up`` (packets waited for in vain).
    """

    def __init__(self, max_wait: float = MAX_WAIT) -> None:
        self.max_wait = max_wait
        self.wait = 0.0  # how long a gap is waited for now
        self._last_seq: int | None = None  # the last packet passed on (or taken)
        self._ssrc: int | None = None  # whose sequence numbers _last_seq counts
        # packets ahead of a gap, by sequence number; None: taken elsewhere
        # (``passed``), fills its place but is not passed on
        self._held: dict[int, T | None] = {}
        self.deadline: float | None = None  # while packets are held: the wait's end
        # (packet, packets lost just before it) to pass on, in order
        self.ready: list[tuple[T, int]] = []
        self._lost: dict[int, None] = {}  # recently given up (insertion-ordered)
        self._in_order = 0
        self.late = 0
        self.given_up = 0

    def admit(self, seq: int, ssrc: int, packet: T, now: float | None) -> int | None:
        """
        A packet arrived at ``now``: the packets lost just before it (up to
        MAX_SEQUENCE_GAP, else 0) when it is to be passed on at once, None
        when not (dropped as late or a copy, held behind a gap, or put in
        ``ready`` after packets that go first). ``now`` None: never wait
        (the caller has no timer for ``deadline``).
        """
        last = self._last_seq
        if ssrc == self._ssrc and last is not None and not self._held:
            delta = (seq - last) & 0xFFFF
            if delta == 1:  # the usual case: next in order, nothing held
                self._last_seq = seq
                self._in_order += 1
                if self._in_order >= SHRINK_AFTER and self.wait > 0:
                    self.wait = max(0.0, self.wait - FRAME)
                    self._in_order = 0
                return 0
        if ssrc != self._ssrc:
            # a new stream; its random first sequence number may be just behind
            # the old one's last: the old one's held packets go first
            self.expire(None)
            self._ssrc = ssrc
            self._last_seq = None
            self._lost.clear()
        if self._last_seq is None:
            self._last_seq = seq
            return self._out(packet, 0)
        return self._place(seq, packet, now)

    @property
    def following(self) -> tuple[int, int] | None:
        """(SSRC, sequence number) of the packet that goes on next at once when
        nothing is held; None when something is, or before the first."""
        if self._held or self._last_seq is None or self._ssrc is None:
            return None
        return self._ssrc, (self._last_seq + 1) & 0xFFFF

    def followed(self, packets: int, seq: int) -> None:
        """``packets`` more in order, passed on elsewhere (rtc.circuit), the last ``seq``."""
        if packets <= 0:
            return
        self._last_seq = seq
        self._in_order += packets
        while self._in_order >= SHRINK_AFTER and self.wait > 0:
            self.wait = max(0.0, self.wait - FRAME)
            self._in_order -= SHRINK_AFTER

    def passed(self, seq: int) -> None:
        """
        A packet of the stream taken elsewhere (an RFC 4733 event in place of
        the audio): the audio after it follows on, it is not a loss.
        """
        last = self._last_seq
        if last is None:
            self._last_seq = seq
            return
        delta = (seq - last) & 0xFFFF
        if not self._held:
            if 0 < delta < 0x8000:
                self._last_seq = seq
            return
        if 0 < delta <= MAX_SEQUENCE_GAP + 1 and seq not in self._held:
            self._held[seq] = None
            self._release()

    def expire(self, now: float | None) -> None:
        """
        At the deadline (``now`` None: at once), give up the packets still
        missing: what was held goes to ``ready``, each with the gap before it.
        """
        deadline = self.deadline
        if not self._held or (now is not None and deadline is not None and now < deadline):
            return
        last = start = self._last_seq
        assert last is not None and start is not None
        for seq in sorted(self._held, key=lambda s: (s - start) & 0xFFFF):
            packet = self._held[seq]
            lost = ((seq - last) & 0xFFFF) - 1
            self._give_up(last, lost)
            last = seq
            if packet is not None:
                self.ready.append((packet, lost))
        self._last_seq = last
        self._held.clear()
        self.deadline = None

    def _place(self, seq: int, packet: T, now: float | None) -> int | None:
        last = self._last_seq
        assert last is not None
        delta = (seq - last) & 0xFFFF
        if delta == 0 or delta > 0xFFFF - BEHIND:
            self.late += 1
            if seq in self._lost:
                # given up, then arrived after all: wait a frame longer from now on
                del self._lost[seq]
                self.wait = min(self.max_wait, self.wait + FRAME)
                self._in_order = 0
            return None
        if delta > MAX_SEQUENCE_GAP + 1:
            # a jump: the stream starts afresh here, after what was held
            self.expire(None)
            self._last_seq = seq
            return self._out(packet, 0)
        if seq in self._held:
            self.late += 1  # a copy of a held one
            return None
        if delta == 1 and not self._held:
            self._last_seq = seq
            return 0
        if now is None and self._held:
            self.expire(None)  # then placed after what was held
            return self._place(seq, packet, None)
        if now is None or (self.wait <= 0 and not self._held):
            # nothing to wait for: the gap is reported at once
            self._give_up(last, delta - 1)
            self._last_seq = seq
            return self._out(packet, delta - 1)
        if not self._held:
            self.deadline = now + self.wait
        elif delta == 1:
            self._in_order = 0  # the wait was needed: it is not quiet yet
        self._held[seq] = packet
        self._release()
        return None

    def _release(self) -> None:
        """Pass on what follows the last packet without a gap."""
        held = self._held
        last = self._last_seq
        assert last is not None
        while held:
            following = (last + 1) & 0xFFFF
            if following not in held:
                break
            packet = held.pop(following)
            last = following
            if packet is not None:
                self.ready.append((packet, 0))
        self._last_seq = last
        if not held:
            self.deadline = None

    def _out(self, packet: T, lost: int) -> int | None:
        if self.ready:  # what went to ``ready`` first goes before it
            self.ready.append((packet, lost))
            return None
        return lost

    def _give_up(self, last: int, lost: int) -> None:
        if lost <= 0:
            return
        self.given_up += lost
        remembered = self._lost
        for k in range(1, min(lost, REMEMBER) + 1):
            remembered[(last + k) & 0xFFFF] = None
        while len(remembered) > REMEMBER:
            del remembered[next(iter(remembered))]
