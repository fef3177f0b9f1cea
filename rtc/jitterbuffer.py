"""
The jitter buffers of the SIP -> browser direction: ``PlayoutBuffer`` orders
20 ms items (payloads in pass-through) by RTP timestamp; ``JitterBuffer``
holds decoded audio and conceals what is missing.

Sans-I/O: packets go in with their arrival time (``put(..., now)``) and
``pop(now)`` returns what is ready to play; the caller calls ``pop`` again at
``deadline`` when one is set (a timer), and after each ``put``.

Playout rule. A frame is released as soon as it and every frame before it are
in: a stream that arrives in order passes with no added delay. The buffer only
holds frames behind a gap (a lost, late or reordered packet), and waits for
the missing frame until its *delay* past the time it was due (20 ms after the
frame before it arrived or was due, whichever is earlier); then it gives the
frame up (None: the audio buffer conceals it) and releases what waited behind
it. After MAX_MISSING frames given up in a row, the rest of the gap is given
up at once (the stream paused or a burst was lost: replaying it late as
concealment would only add delay); the caller passes those on as a gap in
the timestamps. The delay starts at
the minimum (20 ms by default), grows by a frame whenever a packet arrives
after it was given up (up to the maximum, 200 ms) and shrinks again, a frame
at a time, after a quiet period.

Why not hold every frame for the delay, as a playout device does: the gateway
is not where the audio is played. What leaves this buffer is sent on at once
to the browser, whose own adaptive jitter buffer (NetEq) smooths the arrival
times; holding frames here as well would add the same delay twice. What the
browser cannot do for a transcoded call (it sees Opus made from our audio) is
order, deduplicate and conceal the PBX's packets: that is done here, and the
output is a complete sequence of frames, one per 20 ms of the stream's timeline.

A new SSRC, a marker bit after silence or a timestamp jump re-anchors playout.
A jump is a timestamp more than MAX_JUMP_FRAMES from playout, or, for the
packet that continues the sequence numbers (``put(..., continues=True)``: the
caller's RFC 3550 statistics tell), one behind where the stream stood (the
frame after the newest one received) or more than MAX_SKIP frames ahead of it.
A PBX re-bridging a call (Asterisk after a transfer or masquerade) keeps its
SSRC and sequence numbers and moves the timestamps, back as often as forward,
without a marker as often as with: with only the timestamp to go by, the
packets after a jump back were taken for late ones and dropped until the
stream came round to the playout point again (as much audio as the jump, up
to a second), and after a jump ahead were held for frames that would never
come. A late, reordered or duplicate packet has a sequence number behind the
stream's: it is late, reordered or a copy as before. What was held behind a
missing frame when the timeline jumps is dropped with the old timeline.
RFC 3389 comfort noise (audio buffer): white noise at the signalled level,
paced at one frame per 20 ms (``deadline``), until speech resumes; the noise
runs on our clock, not the sender's, so speech resuming re-anchors playout
(the noise may already have played its first frame's place, and the packet
would be taken for a late one and dropped).

Packets of another size than a whole number of frames (a PBX's ptime 10 or
30 ms) are cut into frames by ``FrameAssembler``: on a grid anchored at the
stream's timestamps, filled in any order, so that a reordered packet neither
loses the frame being assembled nor shifts the stream off the grid.
"""

import math
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from .rtp import ts_diff

__all__ = ["FrameAssembler", "JitterBuffer", "PlayoutBuffer"]

Frame = npt.NDArray[np.int16]
T = TypeVar("T")

CONCEAL_GAINS = (0.9, 0.6, 0.3)  # per consecutive lost frame, then silence
SHRINK_AFTER = 250  # frames (5 s) without late packets before the delay shrinks
MAX_JUMP_FRAMES = 50  # a timestamp this far from playout is a new timeline
# how far (seconds per frame) the expected arrival times follow packets that
# come later than expected: a sender clock a little slower than ours
DRIFT = 0.0005
# given up one by one at their deadlines; beyond, the rest of a gap at once
MAX_MISSING = len(CONCEAL_GAINS)
# Frames the timestamps of the packet that continues the sequence numbers may
# skip: a gap, given up at once (no packet can fill it), for a sender clock a
# little fast, an unmarked pause of a frame or two, a frame its encoder
# dropped. No more than concealment covers: further ahead its timeline jumped
# (a gap that long would be given up at once anyway, after the wait, and the
# burst behind it cut short by the sending clock).
MAX_SKIP = MAX_MISSING


class FrameAssembler:
    """
    Cuts audio in packets of any size into frames of ``frame_samples`` on a
    grid of the stream's timestamps, anchored at its first piece (again after
    a new SSRC, a jump or ``marker``). Pieces fill the frames in any arrival
    order; ``add`` returns the frames it completed. A frame that never
    completes (a piece lost) is dropped by ``discard_before`` once playout has
    passed it, or once the stream is MAX_JUMP_FRAMES past it.

    Why a grid, not cutting the stream as it comes: a packet out of order
    broke the run, and cutting restarted at the next piece, off the grid by
    half a frame for ptime 10 or 30 -- the jitter buffer put those frames in
    the nearest place, a 10 ms splice in the audio for the rest of the call.
    """

    def __init__(self, frame_samples: int) -> None:
        self.frame_samples = frame_samples
        self._ssrc: int | None = None
        # the start of the newest frame touched: offsets are counted from it,
        # which keeps them small through a long stream's timestamp wrap
        self._ref: int | None = None
        self._end = 0  # where the newest piece ends, in samples past _ref
        # frames being filled, by timestamp: samples, which are in, marker
        self._frames: dict[int, tuple[Frame, npt.NDArray[np.bool_], bool]] = {}

    @property
    def pending(self) -> bool:
        """A frame is partly filled."""
        return bool(self._frames)

    @property
    def depth(self) -> int:
        """Frames partly filled."""
        return len(self._frames)

    def reset(self) -> None:
        """Forget everything: the next piece anchors the grid."""
        self._frames.clear()
        self._ssrc = None
        self._ref = None
        self._end = 0

    def anchor(self, ssrc: int, timestamp: int) -> None:
        """The grid passes through ``timestamp`` from now on; what is held is dropped."""
        self._frames.clear()
        self._ssrc = ssrc
        self._ref = timestamp & 0xFFFFFFFF
        self._end = 0

    def discard_before(self, timestamp: int) -> None:
        """Drop the frames that start before ``timestamp`` (playout passed them)."""
        for start in [t for t in self._frames if ts_diff(t, timestamp) < 0]:
            del self._frames[start]

    def add(
        self, ssrc: int, timestamp: int, samples: Frame, marker: bool = False
    ) -> list[tuple[int, Frame, int, bool]]:
        """
        A piece of audio starting at ``timestamp``; ``marker``: a talk spurt
        starts here, the grid restarts at it unless it is behind what was
        seen (a reordered packet). Returns the frames it completed, in order:
        (timestamp, samples, lead, marker), ``lead`` the frame's start in
        samples after the piece's (negative when it began in an earlier one),
        ``marker`` on the frame where the grid restarted for a talk spurt.
        """
        size = self.frame_samples
        count = len(samples)
        if count == 0:
            return []
        if ssrc != self._ssrc or self._ref is None:
            self.anchor(ssrc, timestamp)
        assert self._ref is not None
        offset = ts_diff(timestamp, self._ref)
        # a talk spurt's start ahead of all seen (not a reordered packet)
        marker = marker and offset >= self._end
        if abs(offset) > MAX_JUMP_FRAMES * size or marker:
            self.anchor(ssrc, timestamp)
            offset = 0
        ref = self._ref
        done: list[tuple[int, Frame, int, bool]] = []
        first = offset // size
        last = (offset + count - 1) // size
        for k in range(first, last + 1):
            start = k * size
            key = (ref + start) & 0xFFFFFFFF
            entry = self._frames.get(key)
            if entry is None:
                entry = (np.zeros(size, np.int16), np.zeros(size, np.bool_), False)
            frame, filled, marked = entry
            lo = max(offset, start)
            hi = min(offset + count, start + size)
            frame[lo - start : hi - start] = samples[lo - offset : hi - offset]
            filled[lo - start : hi - start] = True
            marked = marked or (marker and k == first)
            if filled.all():
                self._frames.pop(key, None)
                done.append((key, frame, start - offset, marked))
            else:
                self._frames[key] = (frame, filled, marked)
        self._end = max(self._end, offset + count)
        if last > 0:
            # count from the newest frame; frames the stream has left far
            # behind will never be played (bounded memory)
            self._ref = (ref + last * size) & 0xFFFFFFFF
            self._end -= last * size
            self.discard_before((self._ref - MAX_JUMP_FRAMES * size) & 0xFFFFFFFF)
        return done


class PlayoutBuffer(Generic[T]):
    """
    Orders 20 ms items by RTP timestamp and releases them as described in the
    module docstring. ``pop(now)`` yields the items in order, None for each
    frame given up as lost. Counters: ``played``, ``missing`` (given up),
    ``late`` (arrived after being given up or played), ``duplicates``.
    """

    def __init__(
        self,
        frame_samples: int,
        frame_ms: int = 20,
        min_delay: float = 0.02,
        max_delay: float = 0.2,
    ) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("Need 0 < min_delay <= max_delay")
        self.frame_ms = frame_ms
        self.frame_samples = frame_samples  # timestamp increment of one frame
        self._period = frame_ms / 1000
        # bounds between two frames: the minimum up and the maximum down, to
        # stay inside what was configured (round() made 50 ms 40, below the
        # minimum); where no frame is inside (min 50, max 50) the minimum wins.
        # round(, 6): 0.06 * 1000 / 20 is 3.0000000000000004, 3 frames
        self.min_frames = max(1, math.ceil(round(min_delay * 1000 / frame_ms, 6)))
        self.max_frames = max(self.min_frames, math.floor(round(max_delay * 1000 / frame_ms, 6)))
        self.target = self.min_frames  # frames of delay a missing frame is waited for
        self._items: dict[int, tuple[T, float]] = {}  # by RTP timestamp: item, arrival
        self._ssrc: int | None = None
        self._play_ts: int | None = None  # timestamp of the next frame to release
        self._due = 0.0  # when the frame at _play_ts was expected to arrive
        self._started = False  # anything released since the last anchoring
        self._on_time = 0
        self._missing_run = 0  # frames given up in a row
        # the last frames' fate by timestamp (True: played, False: given up), so
        # that a copy of a played frame counts as a duplicate, not as late
        self._history: dict[int, bool] = {}
        # counters
        self.late = 0
        self.duplicates = 0
        self.missing = 0
        self.played = 0

    @property
    def delay(self) -> float:
        """How long past its due time a missing frame is waited for, in seconds."""
        return self.target * self._period

    @property
    def depth(self) -> int:
        """Frames held behind a gap."""
        return len(self._items)

    @property
    def idle(self) -> bool:
        """Nothing held: nothing will be released until the next put()."""
        return not self._items

    @property
    def deadline(self) -> float | None:
        """When pop() has something to do without a new put(): the end of the
        wait for a missing frame; None when nothing waits."""
        if not self._items:
            return None
        return self._due + self.delay

    def reset(self) -> None:
        """
        Forget what is held and the playout point (the next packet re-anchors,
        e.g. after a hold); the adapted delay and the counters stay.
        """
        self._items.clear()
        self._history.clear()
        self._play_ts = None
        self._started = False

    def _offset(self, timestamp: int) -> int:
        assert self._play_ts is not None
        diff = ts_diff(timestamp, self._play_ts)
        # to the nearest frame: see put()
        return (diff + self.frame_samples // 2) // self.frame_samples

    def _anchor(self, timestamp: int, now: float) -> None:
        self._items.clear()
        self._history.clear()
        self._play_ts = timestamp
        self._due = now
        self._started = False

    def put(
        self,
        ssrc: int,
        timestamp: int,
        item: T,
        now: float,
        marker: bool = False,
        continues: bool = False,
    ) -> None:
        """
        One frame (``frame_samples`` of timestamp) that arrived at ``now``;
        ``continues``: its packet's sequence number is the one after the
        highest received (of any payload type) from this SSRC.
        """
        if ssrc != self._ssrc or self._play_ts is None:
            self._ssrc = ssrc
            self._anchor(timestamp, now)
        offset = self._offset(timestamp)
        skipped = self._skipped(offset) if continues else 0
        if (
            abs(offset) > MAX_JUMP_FRAMES
            or (marker and not self._items and offset > 0)
            or not 0 <= skipped <= MAX_SKIP
        ):
            # a new timeline, or a talk spurt after silence: play it from here (a
            # marked packet behind playout that does not continue the sequence
            # numbers is a copy or a late one, as any other)
            self._anchor(timestamp, now)
            offset = 0
        elif skipped and not self._items:
            # the frames before it will never come: gaps now, not after the wait
            self._missing_run = MAX_MISSING
        # Frames are held and released on the grid of frame_samples from the
        # playout point. A timestamp off that grid (a sender whose packets are
        # not a whole frame of its clock apart, a jump by an odd amount) takes
        # the nearest frame's place: kept as it is, playout would step past it
        # for ever, never finding it.
        play_ts = self._play_ts
        assert play_ts is not None  # anchored above
        timestamp = (play_ts + offset * self.frame_samples) & 0xFFFFFFFF
        if offset < 0 and not self._started and offset > -self.max_frames:
            # reordered before anything was released: start from the earlier packet
            self._play_ts = timestamp
            offset = 0
        if offset < 0:
            if self._history.get(timestamp):
                self.duplicates += 1
                return
            self.late += 1
            self._grow()
            return
        if timestamp in self._items:
            self.duplicates += 1
            return
        self._items[timestamp] = (item, now)

    def _skipped(self, offset: int) -> int:
        """
        Frames a packet that continues the sequence numbers, ``offset`` frames
        from playout, leaves out after the newest one received (held, or the
        last played); negative when it goes back on it.
        """
        items = self._items
        if not items:
            return offset
        return offset - 1 - max(self._offset(held) for held in items)

    def take(self, ssrc: int, timestamp: int, now: float) -> bool:
        """
        ``put`` then ``pop`` at once of the frame that plays next, arriving at
        ``now`` with nothing held (a stream in order, the usual case): True when
        it is released (the caller plays it), False when that is not the case
        and nothing was done (the caller puts it).
        """
        if self._items or ssrc != self._ssrc or self._play_ts is None:
            return False
        # A timestamp off the grid by less than half a frame takes the next
        # frame's place all the same (as in put), and the grid follows it:
        # after one packet moved the timeline by an odd amount (a broken one,
        # a sender's clock step), the stream would otherwise go through put
        # and the playout timer for the rest of the call, never relayed at
        # once nor by a circuit again.
        if timestamp != self._play_ts and self._offset(timestamp) != 0:
            return False
        self._release(now)
        self._remember(timestamp, True)
        self._play_ts = (timestamp + self.frame_samples) & 0xFFFFFFFF
        return True

    def _release(self, arrival: float) -> None:
        # the next frame is due a period after this one arrived, or after this
        # one was due if it came late: late arrivals move the grid only slowly
        # (a slower sender clock), early ones at once
        self._due = min(self._due + self._period + DRIFT, arrival + self._period)
        self._started = True
        self._missing_run = 0
        self.played += 1
        self._on_time += 1
        if self._on_time >= SHRINK_AFTER and self.target > self.min_frames:
            self.target -= 1
            self._on_time = 0

    def _grow(self) -> None:
        # a packet came after it was given up: wait one frame longer from now on
        self._on_time = 0
        if self.target < self.max_frames:
            self.target += 1

    def pop(self, now: float) -> list[T | None]:
        """What is ready at ``now``, in order; None for a frame given up as lost."""
        out: list[T | None] = []
        items = self._items
        while items and self._play_ts is not None:
            entry = items.pop(self._play_ts, None)
            if entry is not None:
                out.append(entry[0])
                self._release(entry[1])
            elif self._missing_run >= MAX_MISSING or now >= self._due + self.delay:
                out.append(None)
                self._due += self._period
                self.missing += 1
                self._missing_run += 1
            else:
                break
            self._remember(self._play_ts, entry is not None)
            self._play_ts = (self._play_ts + self.frame_samples) & 0xFFFFFFFF
        return out

    def _remember(self, timestamp: int, played: bool) -> None:
        history = self._history
        history[timestamp] = played
        if len(history) > 2 * MAX_JUMP_FRAMES:
            del history[next(iter(history))]

    @property
    def following(self) -> tuple[int, int] | None:
        """(SSRC, timestamp) of the frame that plays next when nothing is held;
        None when something is, or before the first frame."""
        if self._items or self._play_ts is None or self._ssrc is None:
            return None
        return self._ssrc, self._play_ts

    def followed(self, frames: int, arrival: float) -> None:
        """
        ``frames`` more frames in order, played elsewhere (rtc.circuit), the
        last arriving at ``arrival``: playout goes on after them.
        """
        if frames <= 0 or self._play_ts is None:
            return
        last = (self._play_ts + (frames - 1) * self.frame_samples) & 0xFFFFFFFF
        self._play_ts = (last + self.frame_samples) & 0xFFFFFFFF
        self._due = arrival + self._period
        self._started = True
        self._missing_run = 0
        self.played += frames
        self._on_time += frames
        while self._on_time >= SHRINK_AFTER and self.target > self.min_frames:
            self.target -= 1
            self._on_time -= SHRINK_AFTER
        self._remember(last, True)


class JitterBuffer(PlayoutBuffer[Frame]):
    """
    Decoded audio (packets of any size: see FrameAssembler) with loss concealment:
    ``pop(now)`` returns frames, the first MAX_MISSING lost ones in a row
    replaced by the last frame repeated with a fade (``concealed`` counts
    them), None for each further lost frame (a gap for the caller to skip). RFC 3389 comfort
    noise via ``put_comfort_noise``.
    """

    def __init__(
        self,
        clock_rate: int = 8000,
        frame_ms: int = 20,
        min_delay: float = 0.02,
        max_delay: float = 0.2,
        noise: Callable[[int], npt.NDArray[np.float64]] | None = None,
    ) -> None:
        super().__init__(clock_rate * frame_ms // 1000, frame_ms, min_delay, max_delay)
        self._last: Frame | None = None
        self._lost_run = 0
        self._comfort_level: float | None = None  # dBov, while CN is playing
        self._comfort_due = 0.0
        self._comfort_ts = 0  # the timestamp of the CN packet that started the noise
        self._assembler = FrameAssembler(self.frame_samples)
        rng = np.random.default_rng()
        self._noise = noise or (lambda n: rng.standard_normal(n))
        self.concealed = 0

    @property
    def idle(self) -> bool:
        return not self._items and self._comfort_level is None

    @property
    def deadline(self) -> float | None:
        if self._comfort_level is not None and not self._items:
            return self._comfort_due
        return super().deadline

    def reset(self) -> None:
        super().reset()
        self._comfort_level = None
        self._lost_run = 0
        self._last = None
        self._assembler.reset()

    def put(  # type: ignore[override]
        self,
        ssrc: int,
        timestamp: int,
        samples: Frame,
        now: float,
        marker: bool = False,
        continues: bool = False,
    ) -> None:
        """
        A decoded packet (any size, in samples of the buffer's rate) that
        arrived at ``now``; ``continues`` as for PlayoutBuffer.put.
        """
        size = self.frame_samples
        if len(samples) == size and self._comfort_level is None and not self._assembler.pending:
            # the usual 20 ms packet
            super().put(ssrc, timestamp, samples, now, marker, continues)
            return
        assembler = self._assembler
        if self._comfort_level is not None and not self._items:
            # a packet after the CN packet in sequence is not from before it
            if continues or not self._straggler(ssrc, timestamp):
                # speech after comfort noise: the noise went on on our clock,
                # maybe past this packet's place already; play it from here
                self._play_ts = None
                assembler.anchor(ssrc, timestamp)
                marker = True
                self._comfort_level = None
        else:
            self._comfort_level = None
        if self._started and self._play_ts is not None:
            assembler.discard_before(self._play_ts)  # too late to complete
        whole = len(samples) % size == 0 and not assembler.pending
        if continues and not whole and self._play_ts is not None and ssrc == self._ssrc:
            # pieces are judged as a packet (its frames may start before it)
            if not 0 <= self._skipped(self._offset(timestamp)) <= MAX_SKIP:
                self._anchor(timestamp, now)
                assembler.anchor(ssrc, timestamp)
        if whole:
            # whole frames (ptime 20, 40, 60): each in the nearest frame's place
            frames = [
                (
                    (timestamp + k * size) & 0xFFFFFFFF,
                    samples[k * size : (k + 1) * size],
                    k * size,
                    marker and k == 0,
                )
                for k in range(len(samples) // size)
            ]
        else:
            frames = self._assemble(ssrc, timestamp, samples, marker)
        # When the frame after each is expected (its arrival + a period; a
        # missing one is waited for the delay past that): frames arrive as from
        # a 20 ms sender, ``lead`` after the packet -- with one arrival for all,
        # a frame missing after a 60 ms packet was given up 40 ms before it
        # could come. Packets of another size complete a frame up to ``wait``
        # after that line (for ptime 10 or 30, the second 10 ms of a frame
        # comes 10 ms after its first), so frames are expected that much later.
        wait = size - math.gcd(size, len(samples))
        for k, (frame_ts, frame, lead, marked) in enumerate(frames):
            arrival = now + (lead + wait) * self._period / size
            # whole frames: the first is where the packet starts
            super().put(ssrc, frame_ts, frame, arrival, marked, continues and whole and k == 0)

    def _straggler(self, ssrc: int, timestamp: int) -> bool:
        """Audio from before the comfort noise started (reordered behind the
        CN packet): late, as before, and the noise goes on."""
        behind = -ts_diff(timestamp, self._comfort_ts)
        size = self.frame_samples
        return ssrc == self._ssrc and size // 2 <= behind <= MAX_JUMP_FRAMES * size

    def _assemble(
        self, ssrc: int, timestamp: int, samples: Frame, marker: bool
    ) -> list[tuple[int, Frame, int, bool]]:
        """Pieces of another size than whole frames, through the assembler."""
        size = self.frame_samples
        assembler = self._assembler
        play_ts = self._play_ts
        cut = 0  # samples cut off the piece's start
        if play_ts is not None and ssrc == self._ssrc:
            offset = ts_diff(timestamp, play_ts)
            if self._started and -MAX_JUMP_FRAMES * size <= offset < 0:
                # (partly) behind playout: its frame was played (a copy) or
                # given up (late: the delay grows), as a whole frame's would be
                if self._history.get((play_ts + offset // size * size) & 0xFFFFFFFF):
                    self.duplicates += 1
                else:
                    self.late += 1
                    self._grow()
                cut = -offset
                if len(samples) <= cut:
                    return []
                samples = samples[cut:]
                timestamp = play_ts
            if not assembler.pending:
                # the frames already played set the grid (whole-frame packets
                # before, or a marker that re-anchored playout)
                assembler.anchor(ssrc, play_ts)
        frames = assembler.add(ssrc, timestamp, samples, marker and not self._items)
        return [(ts, frame, lead + cut, marked) for ts, frame, lead, marked in frames]

    def put_comfort_noise(self, ssrc: int, timestamp: int, payload: bytes, now: float) -> None:
        """RFC 3389 CN: the first byte is the noise level in -dBov."""
        if ssrc != self._ssrc or self._play_ts is None:
            self._ssrc = ssrc
            self._anchor(timestamp, now)
        if self._comfort_level is None:
            self._comfort_due = now
            self._comfort_ts = timestamp
        self._comfort_level = -float(payload[0] & 0x7F) if payload else -127.0

    def pop(self, now: float) -> list[Frame | None]:
        out: list[Frame | None] = []
        for frame in super().pop(now):
            if frame is None:
                out.append(self._conceal() if self._lost_run < MAX_MISSING else None)
            else:
                self._last = frame
                self._lost_run = 0
                out.append(frame)
        level = self._comfort_level
        if level is not None and not self._items:
            # the timeline goes on under the noise, so speech resumes in step
            while now >= self._comfort_due and len(out) < MAX_JUMP_FRAMES:
                out.append(self._comfort_noise(level))
                self._comfort_due += self._period
                if self._play_ts is not None:
                    self._play_ts = (self._play_ts + self.frame_samples) & 0xFFFFFFFF
                    self._due = self._comfort_due
            if now >= self._comfort_due:  # after a stall: no burst of noise
                self._comfort_due = now + self._period
        return out

    def _conceal(self) -> Frame:
        self.concealed += 1
        self._lost_run += 1
        if self._last is None:
            return np.zeros(self.frame_samples, dtype=np.int16)
        gain = CONCEAL_GAINS[min(self._lost_run, len(CONCEAL_GAINS)) - 1]
        return np.rint(self._last * gain).astype(np.int16)

    def _comfort_noise(self, level_dbov: float) -> Frame:
        # 0 dBov is a full-scale square wave (RFC 3389 3.1): rms 32767
        rms = 32767 * 10 ** (level_dbov / 20)
        noise = self._noise(self.frame_samples) * rms
        return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)
