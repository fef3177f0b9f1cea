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
  source reports (``skip``: packets lost upstream in pass-through), so that
  bursts and jitter of the source pass through unchanged and the far end's
  jitter buffer sees the source's timing;
- after a pause in the packets sent (hold, a silent source) the next
  frame's timestamp jumps by the time elapsed, so the far end's playout stays
  in step with real time;
- in a continuous stream the timeline never falls more than ``slack`` behind
  the wall clock (a slower source clock, packets lost upstream without a
  report): past that, a frame's timestamp jumps; a frame that comes within
  the slack (a late packet the jitter buffer waited for, a burst) does not
  move it;
- the marker bit goes on the first packet after a pause of ``pause`` or more
  (RFC 3551 4.1: the start of a talk spurt) and whenever ``marker`` is set;
- timestamps are not wrapped (callers take them modulo 2**32 on the wire),
  so a leg can convert them between clock rates;
- ``fill(now)`` says when nothing was written for ``pause``: the leg then
  sends filler (silence, in-band DTMF) itself, one frame per period, so the
  far end never sees the stream stop while the other side is silent.
"""

__all__ = ["FRAME", "SendClock"]

FRAME = 0.02  # seconds per frame
# no frame sent (written) for this long: a pause (marker and timestamps in step
# with the clock on the next, filler meanwhile)
PAUSE = 0.06
# how far a continuous stream's timeline may lag the wall clock before a
# frame's timestamp jumps: frames held back upstream longer than PAUSE are
# preceded by filler, which keeps the timeline going
SLACK = PAUSE + 2 * FRAME


class SendClock:
    def __init__(
        self, frame_ticks: int, timestamp: int, slack: float = SLACK, pause: float = PAUSE
    ) -> None:
        self.frame_ticks = frame_ticks  # RTP timestamp units per frame (codec dependent)
        self.marker = True  # the next frame sent starts a talk spurt
        self._timestamp = timestamp  # the next frame's, when it follows on
        self._slack = slack
        self._pause = pause
        self._position: float | None = None  # wall time the next frame stands for
        self._sent: float | None = None  # when the last frame (any) was stamped
        self._written: float | None = None  # when the last written frame was
        self._fill_at: float | None = None  # next filler frame, while filling

    def _advance(self, now: float) -> int:
        """Frames the timeline moves for a frame sent at ``now`` (0: it follows on)."""
        position = self._position
        if position is None:
            return 0
        if self._sent is None or now - self._sent >= self._pause:
            # after a pause: back in step with the clock
            return max(0, round((now - position) / FRAME))
        behind = now - self._slack - position
        if behind <= 0:
            return 0
        return int(behind / FRAME) + 1

    def stamp(self, now: float, written: bool = True) -> tuple[int, bool]:
        """
        The RTP timestamp and marker of a frame sent at ``now``: one written to
        the leg, or filler (``written=False``: filling goes on).
        """
        advance = self._advance(now)
        timestamp = self._timestamp + advance * self.frame_ticks
        self._timestamp = timestamp + self.frame_ticks
        position = now if self._position is None else self._position
        self._position = position + (advance + 1) * FRAME
        # a packet after none for a pause starts a talk spurt
        marker = self.marker or self._sent is None or now - self._sent >= self._pause
        self.marker = False
        self._sent = now
        if written:
            self._written = now
        return timestamp, marker

    def peek(self, now: float) -> int:
        """The timestamp a frame sent at ``now`` would get (for RFC 4733 events)."""
        return self._timestamp + self._advance(now) * self.frame_ticks

    def skip(self, frames: int) -> None:
        """``frames`` of the source's stream were lost before the next frame."""
        if frames <= 0:
            return
        self._timestamp += frames * self.frame_ticks
        if self._position is not None:
            self._position += frames * FRAME

    def timestamp_at(self, now: float) -> int:
        """The RTP timestamp of the wall-clock instant ``now`` (RTCP sender reports)."""
        if self._position is None:
            return self._timestamp
        elapsed = round((now - self._position) / FRAME * self.frame_ticks)
        return self._timestamp + elapsed

    def fill(self, now: float) -> tuple[bool, float]:
        """
        Whether the leg sends a filler frame now (nothing was written for a
        pause), and when to ask again.
        """
        written = self._written
        if written is not None and now - written < self._pause:
            self._fill_at = None
            return False, written + self._pause
        fill_at = self._fill_at
        if fill_at is None or fill_at < now - self._pause:
            fill_at = now  # filling starts, or restarts after a stall
        if now < fill_at:
            return False, fill_at
        self._fill_at = fill_at + FRAME
        return True, self._fill_at
