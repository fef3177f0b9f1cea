"""
When a leg sends its audio, and with which RTP timestamps.

A leg sends each frame the moment it is written: in the call of the leg that
received it (a datagram callback, the jitter buffer's release), not on a
20 ms clock of its own. A free-running clock would make each relayed frame
wait for its next tick (0-20 ms, 10 on average, per direction) and costs a
timer wake-up per call every 20 ms even when frames arrive on time.

``SendClock`` (sans-I/O: times are passed in) keeps the outgoing stream a
proper RTP stream all the same:

- timestamps advance a frame per frame sent, and by the frames of a gap the
  source reports (``skip``: packets lost upstream in pass-through, as far as
  the time that passed allows: filler may have taken it), so that
  bursts and jitter of the source pass through unchanged and the far end's
  jitter buffer sees the source's timing. A burst after a wait (frames the
  jitter buffer held behind a late packet, up to its 200 ms maximum) keeps
  following on;
- after ``fill_after`` (250 ms: longer than any such wait) with nothing
  written, the source has stopped (hold, a silent or vanished source): the
  leg sends filler (silence, in-band DTMF; ``fill(now)`` says when), one
  frame per period, so the far end never sees the stream stop, and the
  timeline follows the wall clock (after a pause in the packets sent, too:
  the next frame's timestamp jumps by the time elapsed);
- a written frame that would put the timeline more than ``max_lead`` (two
  frames) ahead of the wall clock is dropped (``stamp`` returns None): frames
  that come late in a burst after filler covered for them, or a source clock
  faster than ours. Sending them would put the timeline ahead of real time
  for good, and the far end's jitter buffer would hold every later packet
  that much longer; in a steady stream the lead stays near zero;
- in a continuous stream the timeline never falls more than ``slack`` behind
  the wall clock (a slower source clock, packets lost upstream without a
  report): past that, a frame's timestamp jumps;
- the marker bit goes on the first packet after ``pause`` (60 ms) without
  any (RFC 3551 4.1: the start of a talk spurt) and whenever ``marker`` is
  set;
- timestamps are not wrapped (callers take them modulo 2**32 on the wire),
  so a leg can convert them between clock rates.
"""

__all__ = ["FILL_AFTER", "FRAME", "MAX_LEAD", "PAUSE", "SLACK", "SendClock"]

FRAME = 0.02  # seconds per frame
# no packet sent for this long: the next one starts a talk spurt (marker)
PAUSE = 0.06
# nothing written for this long: the source stopped (filler, timeline to the clock)
FILL_AFTER = 0.25
# how far ahead of the wall clock a written frame may put the timeline
MAX_LEAD = 2 * FRAME
# how far a continuous stream's timeline may lag the wall clock before a
# frame's timestamp jumps (a source stopped longer gets filler, which keeps
# the timeline going)
SLACK = FILL_AFTER + 2 * FRAME


class SendClock:
    def __init__(
        self,
        frame_ticks: int,
        timestamp: int,
        slack: float = SLACK,
        pause: float = PAUSE,
        fill_after: float = FILL_AFTER,
        max_lead: float = MAX_LEAD,
    ) -> None:
        self.frame_ticks = frame_ticks  # RTP timestamp units per frame (codec dependent)
        self.marker = True  # the next frame sent starts a talk spurt
        self._timestamp = timestamp  # the next frame's, when it follows on
        self._slack = slack
        self._pause = pause
        self._fill_after = fill_after
        self._max_lead = max_lead
        self._position: float | None = None  # wall time the next frame stands for
        self._sent: float | None = None  # when the last frame (any) was stamped
        self._written: float | None = None  # when the last written frame was
        self._fill_at: float | None = None  # next filler frame, while filling
        self._resync = False  # the next frame is in step with the clock, whatever came before
        self._not_before: int | None = None  # after resync(): the next frame's earliest timestamp
        self.dropped = 0  # written frames dropped: the timeline was too far ahead

    def _advance(self, now: float) -> int:
        """Frames the timeline moves for a frame sent at ``now`` (0: it follows on)."""
        advance = self._in_step(now)
        not_before = self._not_before
        if not_before is not None:
            # the timeline the events took: the audio resumes after it
            short = not_before - (self._timestamp + advance * self.frame_ticks)
            if short > 0:
                advance += -(-short // self.frame_ticks)
        return advance

    def _in_step(self, now: float) -> int:
        """``_advance`` by the clock alone."""
        position = self._position
        if position is None:
            return 0
        if self._resync or self._sent is None or now - self._sent >= self._fill_after:
            # after a pause: back in step with the clock (never ahead of it)
            return max(0, int((now - position) / FRAME + 1e-6))
        behind = now - self._slack - position
        if behind <= 0:
            return 0
        return int(behind / FRAME) + 1

    def stamp(self, now: float, written: bool = True) -> tuple[int, bool] | None:
        """
        The RTP timestamp and marker of a frame sent at ``now``: one written to
        the leg, or filler (``written=False``: filling goes on). None: drop
        this written frame (the timeline is ``max_lead`` ahead of the clock).
        """
        position = self._position
        if written:
            # the source is writing, dropped or not: no filler meanwhile (filler
            # would keep the timeline ahead, and every written frame dropped)
            self._written = now
            if position is not None and position - now > self._max_lead:
                self.dropped += 1
                return None
        advance = self._advance(now)
        timestamp = self._timestamp + advance * self.frame_ticks
        self._timestamp = timestamp + self.frame_ticks
        self._position = (now if position is None else position) + (advance + 1) * FRAME
        marker = self.marker or self._sent is None or now - self._sent >= self._pause
        self.marker = False
        self._resync = False
        self._not_before = None
        self._sent = now
        return timestamp, marker

    def following(self, now: float) -> int | None:
        """
        The timestamp of a frame written at ``now`` when it simply follows on
        from the last one (no marker, no jump); None otherwise. (It may be one
        ``stamp`` would drop, the timeline being ``max_lead`` ahead: a relay
        that keeps its source's timing, rtc.circuit, sends it all the same.)
        """
        if (
            self._position is None
            or self.marker
            or self._resync
            or self._not_before is not None
            or self._in_step(now) != 0
        ):
            return None
        return self._timestamp

    def follow_on(self, frames: int, sent: float) -> None:
        """
        ``frames`` more written frames were sent by someone else (rtc.circuit),
        each following on from the one before, the last at ``sent``.
        """
        if frames <= 0:
            return
        self._timestamp += frames * self.frame_ticks
        self._position = sent + FRAME
        self._sent = self._written = sent
        self._fill_at = None
        self.marker = False

    def resync(self, not_before: int | None = None) -> None:
        """
        The next frame's timestamp follows the clock (never falls behind it),
        with the marker: something else took the timeline meanwhile (RFC 4733
        events sent in place of the audio). ``not_before``: where that ended
        (an event's timestamp plus its duration): the next frame's timestamp
        is no earlier, however the frames around the events arrived.
        """
        self._resync = True
        self._not_before = not_before
        self.marker = True

    def peek(self, now: float) -> int:
        """The timestamp a frame sent at ``now`` would get (for RFC 4733 events)."""
        return self._timestamp + self._advance(now) * self.frame_ticks

    def skip(self, frames: int, now: float) -> None:
        """
        ``frames`` of the source's stream were lost before the next frame, which
        goes out at about ``now``. The timeline leaves room for them, but never
        so much that the next frame would stand for more than a frame and a
        half past ``now``: where the leg sent filler meanwhile (the source
        paused longer than ``fill_after``), the filler already took that time,
        and counting it twice would put every later frame beyond ``max_lead``.
        """
        position = self._position
        if position is not None:
            frames = min(frames, int((now - position) / FRAME + 1.5))
        if frames <= 0:
            return
        self._timestamp += frames * self.frame_ticks
        if position is not None:
            self._position = position + frames * FRAME

    def timestamp_at(self, now: float) -> int:
        """The RTP timestamp of the wall-clock instant ``now`` (RTCP sender reports)."""
        if self._position is None:
            return self._timestamp
        elapsed = round((now - self._position) / FRAME * self.frame_ticks)
        return self._timestamp + elapsed

    def fill(self, now: float) -> tuple[bool, float]:
        """
        Whether the leg sends a filler frame now (nothing was written for
        ``fill_after``), and when to ask again.
        """
        written = self._written
        # compared as the deadline it returns: at ``now - written < fill_after``
        # float rounding could call that deadline not due yet, for ever
        if written is not None and now < written + self._fill_after:
            self._fill_at = None
            return False, written + self._fill_after
        fill_at = self._fill_at
        if fill_at is None or fill_at < now - self._fill_after:
            fill_at = now  # filling starts, or restarts after a stall
        if now < fill_at:
            return False, fill_at
        self._fill_at = fill_at + FRAME
        return True, self._fill_at
