"""
Call progress tones generated with numpy, 20 ms at a time.

Phase is derived from an absolute sample counter, so consecutive frames join
without discontinuities; cadence edges get a short raised-cosine ramp so the
on/off switching does not click.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from .ports import FRAME_MS

__all__ = [
    "CADENCES",
    "DTMF_FREQUENCIES",
    "TONES",
    "Cadence",
    "RingbackGenerator",
    "ToneGenerator",
    "dtmf_tone",
]

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
    # ETSI ES 201 970 / CEPT's common European tones (what most of the EU uses)
    "eu": Cadence((425,), (1.0, 4.0)),
    "fr": Cadence((440,), (1.5, 3.5)),
    "jp": Cadence((400,), (1.0, 2.0), modulation=16),
}


# Other call progress tones (ITU-T E.180 supplement 2 and national plans).
# A continuous tone is one long "on" with a zero pause.
TONES: dict[str, dict[str, Cadence]] = {
    "ringback": CADENCES,
    "busy": {
        "us": Cadence((480, 620), (0.5, 0.5)),
        "uk": Cadence((400,), (0.375, 0.375)),
        "de": Cadence((425,), (0.48, 0.48)),
        "eu": Cadence((425,), (0.5, 0.5)),
        "fr": Cadence((440,), (0.5, 0.5)),
        # plain 400 Hz: only Japan's ringback and call-waiting tones are
        # modulated by 16 Hz (the busy tone of NTT's network, ITU-T E.180 Supp. 2)
        "jp": Cadence((400,), (0.5, 0.5)),
    },
    "congestion": {
        "us": Cadence((480, 620), (0.25, 0.25)),
        "uk": Cadence((400,), (0.4, 0.35, 0.225, 0.525)),
        "de": Cadence((425,), (0.24, 0.24)),
        "eu": Cadence((425,), (0.25, 0.25)),
        "fr": Cadence((440,), (0.25, 0.25)),
        "jp": Cadence((400,), (0.5, 0.5)),
    },
    "call-waiting": {
        "us": Cadence((440,), (0.3, 9.7)),
        "uk": Cadence((400,), (0.1, 2.0, 0.1, 7.8)),
        "de": Cadence((425,), (0.2, 0.2, 0.2, 5.0)),
        "eu": Cadence((425,), (0.2, 0.2, 0.2, 5.0)),
        "fr": Cadence((440,), (0.3, 10.0)),
        "jp": Cadence((400,), (0.5, 0.5, 0.5, 3.5), modulation=16),
    },
}


@lru_cache(maxsize=32)
def _tone_table(cadence: Cadence, sample_rate: int) -> npt.NDArray[np.int16]:
    """
    One second of the steady tone. With integer frequencies it repeats every
    second, so frames are slices of this table (shared by all calls).
    """
    t = np.arange(sample_rate) / sample_rate
    signal = np.zeros(sample_rate)
    for freq in cadence.frequencies:
        signal += np.sin(2 * np.pi * freq * t)
    if cadence.modulation:
        signal *= 0.55 + 0.45 * np.sin(2 * np.pi * cadence.modulation * t)
    table = np.rint(signal * TONE_AMPLITUDE * 32767).astype(np.int16)
    table.flags.writeable = False
    return table


class RingbackGenerator:
    """Endless ringback for ``country`` at ``sample_rate``, one 20 ms frame per call."""

    tone = "ringback"

    def __init__(self, country: str = "us", sample_rate: int = 8000) -> None:
        try:
            self.cadence = TONES[self.tone][country.lower()]
        except KeyError as exc:
            raise ValueError(f"Unknown {self.tone} country {country!r}") from exc
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._position = 0
        self._table = _tone_table(self.cadence, sample_rate)
        self._silence = np.zeros(self.frame_samples, dtype=np.int16)

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

    def _tone(self, first: int) -> npt.NDArray[np.int16]:
        offset = first % self.sample_rate
        end = offset + self.frame_samples
        if end <= self.sample_rate:
            return self._table[offset:end]
        return np.concatenate((self._table[offset:], self._table[: end - self.sample_rate]))

    def frame(self) -> npt.NDArray[np.int16]:
        first = self._position
        self._position += self.frame_samples
        # the common cases, a frame wholly inside a tone burst or a pause, are
        # a slice of the table or silence; only frames at an edge are shaped
        begin = first % self._cycle
        last = begin + self.frame_samples - 1
        for start, end in self._segments:
            if start + self._ramp <= begin and last < end - self._ramp:
                return self._tone(first).copy()
        if last < self._cycle and not any(
            begin < end and start <= last for start, end in self._segments
        ):
            return self._silence.copy()
        positions = (first + np.arange(self.frame_samples, dtype=np.int64)) % self._cycle
        shaped = self._tone(first) * self._envelope(positions)
        return np.rint(shaped).astype(np.int16)


class ToneGenerator(RingbackGenerator):
    """
    Any call progress tone of TONES ("ringback", "busy", "congestion",
    "call-waiting") for ``country``, one 20 ms frame per ``frame()`` call.
    """

    def __init__(self, tone: str, country: str = "us", sample_rate: int = 8000) -> None:
        if tone not in TONES:
            raise ValueError(f"Unknown tone {tone!r}")
        self.tone = tone
        super().__init__(country, sample_rate)


# ITU-T Q.23: row (low group) and column (high group) frequency of each key
DTMF_FREQUENCIES: dict[str, tuple[int, int]] = {
    key: (row_freq, column_freq)
    for row_freq, keys in zip((697, 770, 852, 941), ("123A", "456B", "789C", "*0#D"), strict=True)
    for column_freq, key in zip((1209, 1336, 1477, 1633), keys, strict=True)
}
# per component, of full scale: about -7 dBm0 in G.711, the high group 2 dB
# louder than the low one as telephones send it (ITU-T Q.24 "twist")
DTMF_LOW_AMPLITUDE = 0.25
DTMF_HIGH_AMPLITUDE = 0.315


def dtmf_tone(digit: str, duration_ms: int, sample_rate: int = 8000) -> npt.NDArray[np.int16]:
    """The dual tone of ``digit`` for ``duration_ms``, with click-free edges."""
    try:
        low, high = DTMF_FREQUENCIES[digit.upper()]
    except KeyError as exc:
        raise ValueError(f"Not a DTMF digit: {digit!r}") from exc
    t = np.arange(sample_rate * duration_ms // 1000) / sample_rate
    signal = DTMF_LOW_AMPLITUDE * np.sin(2 * np.pi * low * t) + DTMF_HIGH_AMPLITUDE * np.sin(
        2 * np.pi * high * t
    )
    ramp = min(len(t) // 2, max(1, round(RAMP_SECONDS * sample_rate)))
    shape = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
    signal[:ramp] *= shape
    signal[len(signal) - ramp :] *= shape[::-1]
    return np.rint(signal * 32767).astype(np.int16)
