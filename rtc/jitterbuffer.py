"""
An adaptive jitter buffer for decoded audio (the SIP -> browser direction).

Sans-I/O: packets go in with their arrival time, the playout clock takes one
20 ms frame out per tick. Playout is driven by RTP timestamps, so reordering
and duplicates sort themselves out, and by a target delay that starts at the
minimum (20 ms by default), grows by a frame whenever a packet arrives too
late to be played (up to the maximum, 200 ms) and shrinks again, a frame at a
time, after a quiet period. Missing frames are concealed by repeating the last
one with a fade (then silence); RFC 3389 comfort noise plays white noise at
the signalled level until speech resumes. A new SSRC, a marker bit (start of a
talk spurt) or a timestamp jump re-anchors playout.
"""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["JitterBuffer"]

Frame = npt.NDArray[np.int16]

CONCEAL_GAINS = (0.9, 0.6, 0.3)  # per consecutive lost frame, then silence
SHRINK_AFTER = 250  # frames (5 s) without late packets before the target shrinks
EXCESS_WINDOW = 25  # frames (0.5 s): a backlog standing this long is trimmed
MAX_JUMP_FRAMES = 50  # a timestamp this far from playout is a new timeline


class JitterBuffer:
    def __init__(
        self,
        clock_rate: int = 8000,
        frame_ms: int = 20,
        min_delay: float = 0.02,
        max_delay: float = 0.2,
        noise: Callable[[int], npt.NDArray[np.float64]] | None = None,
    ) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("Need 0 < min_delay <= max_delay")
        self.frame_ms = frame_ms
        self.frame_samples = clock_rate * frame_ms // 1000
        self.min_frames = max(1, round(min_delay * 1000 / frame_ms))
        self.max_frames = max(self.min_frames, round(max_delay * 1000 / frame_ms))
        self.target = self.min_frames  # frames held before playing
        self._frames: dict[int, Frame] = {}  # by RTP timestamp
        self._ssrc: int | None = None
        self._play_ts: int | None = None  # timestamp of the next frame to play
        self._waiting = True  # filling up to the target before playing
        self._started = False  # anything played since the last re-anchoring
        self._last: Frame | None = None
        self._lost_run = 0
        self._on_time = 0
        self._ticks = 0
        self._min_depth = 0
        self._comfort_level: float | None = None  # dBov, while CN is playing
        rng = np.random.default_rng()
        self._noise = noise or (lambda n: rng.standard_normal(n))
        # counters
        self.late = 0
        self.duplicates = 0
        self.concealed = 0
        self.played = 0

    @property
    def delay(self) -> float:
        """Current target delay in seconds."""
        return self.target * self.frame_ms / 1000

    @property
    def depth(self) -> int:
        """Frames buffered from the playout point on."""
        return len(self._frames)

    @property
    def idle(self) -> bool:
        """
        Nothing left to play: no frame buffered, no comfort noise and the
        concealment of the last loss run exhausted (or nothing ever received).
        A paced reader may stop its clock here and ``reset()``.
        """
        return (
            not self._frames
            and self._comfort_level is None
            and (self._play_ts is None or self._lost_run >= len(CONCEAL_GAINS))
        )

    def reset(self) -> None:
        """
        Forget what is buffered and the playout point (the next packet
        re-anchors, e.g. after a hold or a long silence); the adapted target
        delay and the counters stay.
        """
        self._frames.clear()
        self._play_ts = None
        self._waiting = True
        self._started = False
        self._comfort_level = None
        self._lost_run = 0
        self._last = None

    def _offset(self, timestamp: int) -> int:
        assert self._play_ts is not None
        diff = (timestamp - self._play_ts) & 0xFFFFFFFF
        if diff >= 0x80000000:
            diff -= 1 << 32
        return diff // self.frame_samples

    def _reset(self, timestamp: int) -> None:
        self._frames.clear()
        self._play_ts = timestamp
        self._waiting = True
        self._started = False

    def put(self, ssrc: int, timestamp: int, samples: Frame, marker: bool = False) -> None:
        """A decoded packet (any multiple of 20 ms)."""
        if ssrc != self._ssrc or self._play_ts is None:
            self._ssrc = ssrc
            self._reset(timestamp)
        offset = self._offset(timestamp)
        if abs(offset) > MAX_JUMP_FRAMES or (marker and not self._frames and offset != 0):
            # a new timeline, or a talk spurt after silence: play it from here
            self._reset(timestamp)
            offset = 0
        if offset < 0 and not self._started and offset > -self.max_frames:
            # reordered before playout began: start from the earlier packet
            self._play_ts = timestamp
            offset = 0
        if offset < 0:
            self.late += 1
            self._grow()
            return
        self._comfort_level = None
        for k in range(len(samples) // self.frame_samples):
            ts = (timestamp + k * self.frame_samples) & 0xFFFFFFFF
            if ts in self._frames:
                self.duplicates += 1
                continue
            self._frames[ts] = samples[k * self.frame_samples : (k + 1) * self.frame_samples]

    def put_comfort_noise(self, ssrc: int, timestamp: int, payload: bytes) -> None:
        """RFC 3389 CN: the first byte is the noise level in -dBov."""
        if ssrc != self._ssrc or self._play_ts is None:
            self._ssrc = ssrc
            self._reset(timestamp)
        self._comfort_level = -float(payload[0] & 0x7F) if payload else -127.0

    def _grow(self) -> None:
        # a packet came too late: hold one more frame back from now on
        self._on_time = 0
        if self.target < self.max_frames:
            self.target += 1
            self._waiting = True

    def get(self) -> Frame | None:
        """
        The next 20 ms frame at the playout tick: audio, concealment or comfort
        noise; None while nothing was ever received (the caller plays silence).
        """
        if self._play_ts is None:
            return None
        if self._comfort_level is not None and not self._frames:
            # the timeline goes on under the noise, so speech resumes in step
            self._play_ts = (self._play_ts + self.frame_samples) & 0xFFFFFFFF
            return self._comfort_noise(self._comfort_level)
        if self._waiting:
            if self._ready():
                self._waiting = False
            else:
                return self._conceal(advance=False)

        frame = self._frames.pop(self._play_ts, None)
        self._play_ts = (self._play_ts + self.frame_samples) & 0xFFFFFFFF
        # drop whatever fell behind the playout point
        for ts in [ts for ts in self._frames if self._offset(ts) < 0]:
            del self._frames[ts]
        if frame is None:
            return self._conceal(advance=True)

        self._last = frame
        self._lost_run = 0
        self._started = True
        self.played += 1
        self._on_time += 1
        if self._on_time >= SHRINK_AFTER and self.target > self.min_frames:
            self.target -= 1
            self._on_time = 0
        self._trim()
        return frame

    def _trim(self) -> None:
        # a backlog beyond the target that bursts cause and drain again is
        # what the buffer is for; one that stands for EXCESS_WINDOW frames
        # (after a shrink, or clock drift) is latency: skip a frame
        depth = len(self._frames)
        self._min_depth = depth if self._ticks == 0 else min(self._min_depth, depth)
        self._ticks += 1
        if self._ticks < EXCESS_WINDOW:
            return
        self._ticks = 0
        if self._min_depth >= self.target and self._play_ts is not None:
            self._frames.pop(self._play_ts, None)
            self._play_ts = (self._play_ts + self.frame_samples) & 0xFFFFFFFF

    def _ready(self) -> bool:
        if not self._frames:
            return False
        newest = max(self._offset(ts) for ts in self._frames)
        return newest + 1 >= self.target

    def _conceal(self, advance: bool) -> Frame:
        if advance:
            self.concealed += 1
        self._lost_run += 1
        if self._last is None or self._lost_run > len(CONCEAL_GAINS):
            return np.zeros(self.frame_samples, dtype=np.int16)
        gain = CONCEAL_GAINS[self._lost_run - 1]
        return np.rint(self._last * gain).astype(np.int16)

    def _comfort_noise(self, level_dbov: float) -> Frame:
        # 0 dBov is a full-scale square wave (RFC 3389 3.1): rms 32767
        rms = 32767 * 10 ** (level_dbov / 20)
        noise = self._noise(self.frame_samples) * rms
        return np.clip(np.rint(noise), -32768, 32767).astype(np.int16)
