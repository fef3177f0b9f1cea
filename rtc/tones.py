"""
Call progress tones generated with numpy, 20 ms at a time.

Phase is derived from an absolute sample counter, so consecutive frames join
without discontinuities; cadence edges get a short raised-cosine ramp so the
on/off switching does not click.
"""

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .ports import FRAME_MS

__all__ = ["CADENCES", "Cadence", "RingbackGenerator"]

RAMP_SECONDS = 0.004
TONE_AMPLITUDE = 0.1  # per frequency component, of full scale (about -20 dBFS)


@dataclass(frozen=True)
class Cadence:
    frequencies: tuple[int, ...]
    # alternating on, off durations in seconds, starting with "on"
    pattern: tuple[float, ...]
    # amplitude modulation frequency in Hz (0 for none)
    modulation: int = 0


CADENCES: dict[str, Cadence] = {
    "us": Cadence((440, 480), (2.0, 4.0)),
    "uk": Cadence((400, 450), (0.4, 0.2, 0.4, 2.0)),
    "de": Cadence((425,), (1.0, 4.0)),
    "fr": Cadence((440,), (1.5, 3.5)),
    "jp": Cadence((400,), (1.0, 2.0), modulation=16),
}


class RingbackGenerator:
    """Endless ringback for ``country`` at ``sample_rate``, one 20 ms frame per call."""

    def __init__(self, country: str = "us", sample_rate: int = 8000) -> None:
        try:
            self.cadence = CADENCES[country.lower()]
        except KeyError as exc:
            raise ValueError(f"Unknown ringback country {country!r}") from exc
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._position = 0

        segments = []
        start = 0
        for i, duration in enumerate(self.cadence.pattern):
            length = round(duration * sample_rate)
            if i % 2 == 0:
                segments.append((start, start + length))
            start += length
        self._segments = segments
        self._cycle = start
        self._ramp = max(1, round(RAMP_SECONDS * sample_rate))

    def _envelope(self, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        env = np.zeros(len(positions))
        for start, end in self._segments:
            # distance to the nearest edge, shaped into a raised-cosine ramp
            edge = np.minimum(positions - start, end - 1 - positions)
            ramp = np.clip((edge + 0.5) / self._ramp, 0.0, 1.0)
            inside = (positions >= start) & (positions < end)
            env += np.where(inside, 0.5 - 0.5 * np.cos(np.pi * ramp), 0.0)
        return env

    def frame(self) -> npt.NDArray[np.int16]:
        n = self._position + np.arange(self.frame_samples, dtype=np.int64)
        self._position += self.frame_samples
        # integer frequencies repeat every second: keep the phase argument small
        t = (n % self.sample_rate) / self.sample_rate
        signal = np.zeros(self.frame_samples)
        for freq in self.cadence.frequencies:
            signal += np.sin(2 * np.pi * freq * t)
        if self.cadence.modulation:
            signal *= 0.55 + 0.45 * np.sin(2 * np.pi * self.cadence.modulation * t)
        signal *= self._envelope(n % self._cycle) * TONE_AMPLITUDE * 32767
        return np.rint(signal).astype(np.int16)
