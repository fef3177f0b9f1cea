"""
The jitter buffer of a leg in pass-through (SIP -> browser, same codec both
legs): 20 ms payloads are reordered and deduplicated by RTP timestamp and
played out one per tick, undecoded.

Sans-I/O, and the same playout rules as rtc.jitterbuffer.JitterBuffer (which
holds decoded audio): a target delay that starts at the minimum, grows by a
frame whenever a packet arrives too late to be played (up to the maximum) and
shrinks after a quiet period; a backlog standing beyond the target is trimmed;
a new SSRC, a marker bit after silence or a timestamp jump re-anchors playout.
What it cannot do on payloads is conceal: a missing packet is a tick with
nothing (``get()`` returns None) and the receiving decoder (the browser's)
conceals the gap, which its timestamps show.
"""

from typing import Generic, TypeVar

__all__ = ["PacketJitterBuffer"]

T = TypeVar("T")

SHRINK_AFTER = 250  # frames (5 s) without late packets before the target shrinks
EXCESS_WINDOW = 25  # frames (0.5 s): a backlog standing this long is trimmed
MAX_JUMP_FRAMES = 50  # a timestamp this far from playout is a new timeline
# consecutive missing ticks after which the stream counts as stopped (idle)
MAX_MISSING = 3


class PacketJitterBuffer(Generic[T]):
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
        self.frame_samples = frame_samples  # timestamp increment of one packet
        self.min_frames = max(1, round(min_delay * 1000 / frame_ms))
        self.max_frames = max(self.min_frames, round(max_delay * 1000 / frame_ms))
        self.target = self.min_frames
        self._packets: dict[int, T] = {}  # by RTP timestamp
        self._ssrc: int | None = None
        self._play_ts: int | None = None
        self._waiting = True
        self._started = False
        self._missing_run = 0
        self._on_time = 0
        self._ticks = 0
        self._min_depth = 0
        # counters
        self.late = 0
        self.duplicates = 0
        self.missing = 0
        self.played = 0

    @property
    def depth(self) -> int:
        return len(self._packets)

    @property
    def idle(self) -> bool:
        """Nothing buffered and the stream stopped (or never started)."""
        return not self._packets and (self._play_ts is None or self._missing_run >= MAX_MISSING)

    def reset(self) -> None:
        self._packets.clear()
        self._play_ts = None
        self._waiting = True
        self._started = False
        self._missing_run = 0

    def _offset(self, timestamp: int) -> int:
        assert self._play_ts is not None
        diff = (timestamp - self._play_ts) & 0xFFFFFFFF
        if diff >= 0x80000000:
            diff -= 1 << 32
        return diff // self.frame_samples

    def _anchor(self, timestamp: int) -> None:
        self._packets.clear()
        self._play_ts = timestamp
        self._waiting = True
        self._started = False
        self._missing_run = 0

    def put(self, ssrc: int, timestamp: int, packet: T, marker: bool = False) -> None:
        """One packet of one frame (``frame_samples`` of timestamp)."""
        if ssrc != self._ssrc or self._play_ts is None:
            self._ssrc = ssrc
            self._anchor(timestamp)
        offset = self._offset(timestamp)
        if abs(offset) > MAX_JUMP_FRAMES or (marker and not self._packets and offset != 0):
            self._anchor(timestamp)
            offset = 0
        if offset < 0 and not self._started and offset > -self.max_frames:
            # reordered before playout began: start from the earlier packet
            self._play_ts = timestamp
            offset = 0
        if offset < 0:
            self.late += 1
            self._on_time = 0
            if self.target < self.max_frames:
                self.target += 1
                self._waiting = True
            return
        if timestamp in self._packets:
            self.duplicates += 1
            return
        self._packets[timestamp] = packet

    def get(self) -> T | None:
        """The packet due at this tick; None: nothing due (missing, or still filling)."""
        if self._play_ts is None:
            return None
        if self._waiting:
            if not self._packets:
                self._missing_run += 1
                return None
            newest = max(self._offset(ts) for ts in self._packets)
            if newest + 1 < self.target:
                return None
            self._waiting = False
        packet = self._packets.pop(self._play_ts, None)
        self._play_ts = (self._play_ts + self.frame_samples) & 0xFFFFFFFF
        for ts in [ts for ts in self._packets if self._offset(ts) < 0]:
            del self._packets[ts]
        if packet is None:
            self._missing_run += 1
            if self._started:
                self.missing += 1
            return None
        self._missing_run = 0
        self._started = True
        self.played += 1
        self._on_time += 1
        if self._on_time >= SHRINK_AFTER and self.target > self.min_frames:
            self.target -= 1
            self._on_time = 0
        self._trim()
        return packet

    def _trim(self) -> None:
        depth = len(self._packets)
        self._min_depth = depth if self._ticks == 0 else min(self._min_depth, depth)
        self._ticks += 1
        if self._ticks < EXCESS_WINDOW:
            return
        self._ticks = 0
        if self._min_depth >= self.target and self._play_ts is not None:
            self._packets.pop(self._play_ts, None)
            self._play_ts = (self._play_ts + self.frame_samples) & 0xFFFFFFFF
