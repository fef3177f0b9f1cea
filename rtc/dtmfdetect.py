"""
In-band DTMF detection for audio from a SIP side without telephone-event.

A key press starts in analysis windows of 205 samples (half-overlapping) and
is then followed in blocks of a quarter window until it ends.

Start: each window is tested for the eight DTMF frequencies with single-bin
DFTs (what the Goertzel algorithm computes), evaluated for all frequencies at
once as one matrix product over each half of the window. The strongest row and
column are taken, their true frequencies estimated from how far each tone's
phase turns from the first half to the second, and the two tones fitted to the
window by least squares at those frequencies. Talk-off protection (speech or
music mistaken for digits) follows the usual checks of ITU-T Q.24 detectors on
that fit: the two tones must carry nearly all of the window's energy, lie
within the frequency tolerance, stand well above the other tones of their
group, have a plausible twist and no strong second harmonic in what the fit
leaves (voices have harmonics, DTMF has none). A digit is reported once two
consecutive windows hold it at the same frequencies (a voice's harmonics
glide), one of them possibly cut by the tone's start or end.

Fitting at the estimated frequency rather than measuring at the nominal one is
what gives Q.24's tolerance (operate within 1.5 %, where a nominal bin has
lost four fifths of a 1633 Hz tone's power) while keeping its non-operation at
3.5 %; measuring the harmonics on the residual keeps the other group's tone
out of them (2 x 697 Hz is 58 Hz from 1336 Hz, within a bin's leakage).

Follow: once reported, the key press lasts while its two tones dominate their
groups in 51-sample blocks. A lost, concealed (repeated) or reordered packet
makes a phase jump that spoils the coherent windows around it for up to three
hops, but only the one block it falls in; a 40 ms pause between two presses
of the same key spans five or more blocks.
"""

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = ["DtmfDetector"]

ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
KEYS = ("123A", "456B", "789C", "*0#D")

RATE = 8000
WINDOW = 205  # at 8 kHz: 39 Hz resolution, enough to separate 697 and 770 Hz
HOP = 102  # half-overlapping windows: a 40 ms tone spans two of them
HALF = WINDOW // 2  # the window's halves [0, HALF) and [HALF, WINDOW) are 102.5 apart
BLOCK = HOP // 2  # 6.4 ms: the granularity at which a key press is followed
MIN_LEVEL = 10 ** (-40 / 20)  # rms (of full scale) below which nothing is a digit
# of the window's energy in the two fitted tones: 0.97 for a tone 15 dB above
# noise, 0.76-0.81 for the synthetic voices that still passed the other checks
MIN_TONE_SHARE = 0.85
# for the other window of the two that start a digit, where the tone starts
# or stops: a 40 ms tone with 4 ms ramps fills its edge windows to about 0.7
# in some alignments; a tone needs 26 ms to fill one window to 0.85 and the
# next to 0.68 (Q.24: no digit from 20-24 ms)
MIN_EDGE_SHARE = 0.68
MIN_SPREAD_SHARE = 0.4  # looser pre-check (see _classify): spares most speech the fit
MIN_GROUP_RATIO = 6.0  # fitted tone over the others of its group (7.8 dB)
# Q.24 figures are 4-8 dB; the fit measures twist to about 0.1 dB (mu-law
# noise), so a key sent at exactly 8 dB passes
MAX_TWIST_DB = 8.5
MAX_HARMONIC_RATIO = 0.1  # second harmonic power relative to the fundamental
# Q.24: operate within 1.5 %, not from 3.5 %; the estimate is good to about
# 0.2 % (where the tone starts or ends in the window), and every step wider
# lets more pairs of a voice's harmonics in
MAX_DEVIATION = 0.02
# relative frequency change from one window to the next: up to 0.45 % for a
# key's tones in noise, 0.6 % and more for the voices gliding through a key
MAX_DRIFT = 0.005
MIN_PRESENT_SHARE = 0.3  # of a block's energy in the current digit's two tones
END_BLOCKS = 4  # blocks (25.5 ms) without the digit that end its key press


_OTHERS = np.array([[j for j in range(4) if j != i] for i in range(4)])  # of a group's tone


# what every detector shares, computed once
_OMEGA = 2 * np.pi * np.array(ROWS + COLUMNS, dtype=np.float64) / RATE
_N = np.arange(WINDOW, dtype=np.float64)
_PHASORS = np.exp(-1j * np.outer(_OMEGA, _N))
# one product gives each half's DFT bins: rows 0-7 the first half, 8-15 the second
_HALVES = np.zeros((16, WINDOW), dtype=np.complex128)
_HALVES[:8, :HALF] = _PHASORS[:, :HALF]
_HALVES[8:, HALF:] = _PHASORS[:, HALF:]
_BLOCKS = np.ascontiguousarray(_PHASORS[:, :BLOCK].T)


def _unmixing() -> npt.NDArray[np.float64]:
    """
    Per half and (row, column): from the bins of the two tones to their cos
    and sin amplitudes, so neither tone's leakage bends the other's phase.
    """
    unmix = np.zeros((2, 4, 4, 4, 4))
    for half, part in enumerate((slice(0, HALF), slice(HALF, WINDOW))):
        cos, sin = _PHASORS.real[:, part], -_PHASORS.imag[:, part]
        for row in range(4):
            for column in range(4):
                pair = np.stack((cos[row], sin[row], cos[4 + column], sin[4 + column]))
                unmix[half, row, column] = np.linalg.inv(pair @ pair.T)
    return unmix


_UNMIX = _unmixing()


class _Tones(NamedTuple):
    """What one window holds: a digit's two tones, fitted."""

    digit: str
    row: int
    column: int
    share: float  # of the window's energy in the two tones
    deviation: npt.NDArray[np.float64]  # of each tone from nominal, relative
    clean: bool  # no second harmonic: checked where the tones fill the window


class DtmfDetector:
    """Feed 8 kHz int16 frames of any length; returns the digits that started."""

    def __init__(self, sample_rate: int = 8000) -> None:
        if sample_rate != RATE:
            raise ValueError(f"DtmfDetector works at {RATE} Hz")
        self._buffer = np.zeros(0, dtype=np.float64)
        self._previous: _Tones | None = None  # the last window's
        self._current: _Tones | None = None  # the key pressed now
        self._absent = 0  # consecutive blocks without the current digit

    def process(self, frame: npt.NDArray[np.int16]) -> list[str]:
        self._buffer = np.concatenate((self._buffer, frame.astype(np.float64) / 32768))
        digits = []
        while len(self._buffer) >= WINDOW:
            window = self._buffer[:WINDOW]
            tones = None
            if self._current is not None:
                # the hop's new samples: the blocks tile the stream
                self._follow(window[HOP : HOP + 2 * BLOCK])
            if self._current is None:  # a held key needs no windows: spares the fit
                tones = self._classify(window)
            self._buffer = self._buffer[HOP:]
            if self._starts(tones):
                assert tones is not None
                self._current, self._absent = tones, 0
                digits.append(tones.digit)
            self._previous = tones
        return digits

    def _starts(self, tones: _Tones | None) -> bool:
        """Whether this window and the one before start a key press."""
        previous = self._previous
        if tones is None or previous is None:
            return False
        if previous.digit != tones.digit:
            return False
        # one of the two may be cut by the tone's start or end: fills less
        # of its window, and the cut leaks into the harmonic's bin
        if not any(t.clean and t.share >= MIN_TONE_SHARE for t in (previous, tones)):
            return False
        # a key's tones keep their frequencies; a voice's harmonics glide
        return bool(np.all(np.abs(tones.deviation - previous.deviation) <= MAX_DRIFT))

    def _follow(self, samples: npt.NDArray[np.float64]) -> None:
        """Ends the current key press after END_BLOCKS blocks without its tones."""
        assert self._current is not None
        row, column = self._current.row, self._current.column
        blocks = samples.reshape(-1, BLOCK)
        energy = np.einsum("ij,ij->i", blocks, blocks)
        power = np.abs(blocks @ _BLOCKS) ** 2
        # a sine of amplitude A gives power (A N / 2)^2 and energy A^2 N / 2
        share = (power[:, row] + power[:, 4 + column]) * 2 / (BLOCK * np.maximum(energy, 1e-30))
        present = (
            (energy >= MIN_LEVEL**2 * BLOCK)
            & (np.argmax(power[:, :4], axis=1) == row)
            & (np.argmax(power[:, 4:], axis=1) == column)
            & (share >= MIN_PRESENT_SHARE)
        )
        for block_present in present:
            self._absent = 0 if block_present else self._absent + 1
            if self._absent >= END_BLOCKS:
                self._current = None
                return

    def _classify(self, window: npt.NDArray[np.float64]) -> _Tones | None:
        """The key whose tones the window holds, fitted, or None."""
        energy = float(window @ window)
        if energy < MIN_LEVEL**2 * WINDOW:
            return None
        halves = _HALVES @ window
        first, second = halves[:8], halves[8:]
        # the halves' powers added: blind to the phase, so a tone 2 % off (up
        # to a bin at 1633 Hz) still shows at its nominal frequency, and
        # cheap enough to spare most speech the rest
        spread = first.real**2 + first.imag**2 + second.real**2 + second.imag**2
        row = int(np.argmax(spread[:4]))
        column = int(np.argmax(spread[4:]))
        if (spread[row] + spread[4 + column]) * 4 / (WINDOW * energy) < MIN_SPREAD_SHARE:
            return None
        picked = [row, 4 + column]
        bins = halves.reshape(2, 8)[:, picked]
        # the bins as cos and sin projections (a bin is the sum of x e^-jwn)
        projections = np.stack((bins.real, -bins.imag), axis=-1).reshape(2, 4)
        amplitudes = np.einsum("hij,hj->hi", _UNMIX[:, row, column], projections)
        phasor = amplitudes[:, 0::2] - 1j * amplitudes[:, 1::2]  # per half and tone
        # the phase a tone gains from one half to the next is its offset from
        # the bin's frequency times the distance of the halves' middles. Where
        # the tone starts or stops inside the window, one half holds it only
        # next to the other half, and the middle of that part counts: the
        # halves' energy per sample tells how long it is
        density = np.maximum(
            (window[:HALF] @ window[:HALF] / HALF, window[HALF:] @ window[HALF:] / (WINDOW - HALF)),
            1e-30,
        )
        filled = np.minimum(1.0, density / density[::-1]) * (HALF, WINDOW - HALF)
        offset = np.angle(phasor[1] * np.conj(phasor[0])) / (filled.sum() / 2)
        deviation = offset / _OMEGA[picked]
        if np.any(np.abs(deviation) > MAX_DEVIATION):
            return None
        # least squares: the two tones at their own frequencies
        omega = _OMEGA[picked] + offset
        waves = np.exp(1j * np.outer(omega, _N))
        basis = np.concatenate((waves.real, waves.imag))
        fitted = basis @ window
        coefficients = np.linalg.solve(basis @ basis.T, fitted)
        share = float(coefficients @ fitted) / energy
        if share < MIN_EDGE_SHARE:
            return None
        power = coefficients[:2] ** 2 + coefficients[2:] ** 2  # A^2 of row, column
        if max(power) > 10 ** (MAX_TWIST_DB / 10) * min(power):
            return None
        # the other tones of each group, at their nominal frequencies, as A^2
        others = np.abs(first + second) ** 2 * (2 / WINDOW) ** 2
        if others[_OTHERS[row]].max() * MIN_GROUP_RATIO > power[0]:
            return None
        if others[4 + _OTHERS[column]].max() * MIN_GROUP_RATIO > power[1]:
            return None
        residual = window - coefficients @ basis
        harmonics = np.abs((waves * waves) @ residual) ** 2 * (2 / WINDOW) ** 2
        clean = bool(np.all(harmonics <= MAX_HARMONIC_RATIO * power))
        return _Tones(KEYS[row][column], row, column, share, deviation, clean)
