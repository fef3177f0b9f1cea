"""
In-band DTMF detection for audio from a SIP side without telephone-event.

Each analysis window is tested for the eight DTMF frequencies with the
Goertzel algorithm's single-bin DFT -- evaluated for all frequencies at once
as one matrix product, which gives the same magnitudes as running the Goertzel
recursion per tone but in numpy. Talk-off protection (speech or music
mistaken for digits) follows the usual checks of ITU-T Q.24 detectors: the two
tones must carry nearly all of the window's energy, stand well above the other
tones of their group, have a plausible twist and no strong second harmonic
(voices have harmonics, DTMF has none), and persist across two overlapping
windows before a digit is reported, once per key press.
"""

import numpy as np
import numpy.typing as npt

__all__ = ["DtmfDetector"]

ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
KEYS = ("123A", "456B", "789C", "*0#D")

WINDOW = 205  # at 8 kHz: 39 Hz resolution, enough to separate 697 and 770 Hz
HOP = 102  # half-overlapping windows: a 40 ms tone spans two of them
MIN_LEVEL = 10 ** (-40 / 20)  # rms (of full scale) below which nothing is a digit
MIN_TONE_SHARE = 0.75  # of the window's energy in the two strongest tones
MIN_GROUP_RATIO = 6.0  # strongest tone over the others of its group (7.8 dB)
MAX_TWIST_DB = 8.0
MAX_HARMONIC_RATIO = 0.1  # second harmonic power relative to the fundamental
DIGIT_END_WINDOWS = 2  # windows without the digit before it may repeat


class DtmfDetector:
    """Feed 8 kHz int16 frames of any length; returns the digits that started."""

    def __init__(self, sample_rate: int = 8000) -> None:
        if sample_rate != 8000:
            raise ValueError("DtmfDetector works at 8000 Hz")
        frequencies = np.array(ROWS + COLUMNS + tuple(2 * f for f in ROWS + COLUMNS))
        n = np.arange(WINDOW)
        angles = 2 * np.pi * np.outer(frequencies, n) / sample_rate
        self._basis = np.concatenate((np.cos(angles), np.sin(angles))).astype(np.float64)
        self._buffer = np.zeros(0, dtype=np.float64)
        self._candidate: str | None = None
        self._current: str | None = None
        self._misses = 0

    def process(self, frame: npt.NDArray[np.int16]) -> list[str]:
        self._buffer = np.concatenate((self._buffer, frame.astype(np.float64) / 32768))
        digits = []
        while len(self._buffer) >= WINDOW:
            digit = self._classify(self._buffer[:WINDOW])
            self._buffer = self._buffer[HOP:]
            reported = self._track(digit)
            if reported is not None:
                digits.append(reported)
        return digits

    def _track(self, digit: str | None) -> str | None:
        if digit is not None and digit == self._current:
            self._misses = 0
            return None
        if self._current is not None:
            # a key press ends after a few windows without it, so that one
            # disturbed window inside a tone does not count it twice
            self._misses += 1
            if self._misses < DIGIT_END_WINDOWS:
                return None
            self._current = None
        if digit is not None and digit == self._candidate:
            self._current, self._candidate, self._misses = digit, None, 0
            return digit
        self._candidate = digit
        return None

    def _classify(self, window: npt.NDArray[np.float64]) -> str | None:
        energy = float(window @ window)
        if energy < MIN_LEVEL**2 * WINDOW:
            return None
        projections = self._basis @ window
        count = len(projections) // 2
        power = projections[:count] ** 2 + projections[count:] ** 2
        # a sine of amplitude A gives power (A N / 2)^2 and energy A^2 N / 2
        share = power * 2 / (WINDOW * energy)
        rows, columns, harmonics = share[:4], share[4:8], share[8:]
        row, column = int(np.argmax(rows)), int(np.argmax(columns))
        row_power, column_power = rows[row], columns[column]
        if row_power + column_power < MIN_TONE_SHARE:
            return None
        if np.sort(rows)[-2] * MIN_GROUP_RATIO > row_power:
            return None
        if np.sort(columns)[-2] * MIN_GROUP_RATIO > column_power:
            return None
        twist_db = 10 * np.log10(column_power / row_power)
        if abs(twist_db) > MAX_TWIST_DB:
            return None
        if (
            harmonics[row] > MAX_HARMONIC_RATIO * row_power
            or harmonics[4 + column] > MAX_HARMONIC_RATIO * column_power
        ):
            return None
        return KEYS[row][column]
