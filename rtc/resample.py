"""
Stateful rational polyphase resampler for int16 audio.

The anti-aliasing / anti-imaging lowpass is a Kaiser-windowed sinc designed
with numpy alone. Its band edges are fixed relative to the lower of the two
rates (passband to 0.425 x rate, stopband from 0.575 x rate, i.e. 3.4 kHz and
4.6 kHz for narrowband telephony) which is what G.711 <-> wideband bridging
needs.
"""

from math import ceil, gcd, pi

import numpy as np
import numpy.typing as npt

__all__ = ["Resampler", "design_lowpass"]

PASSBAND_EDGE = 0.425  # fraction of the lower sample rate
STOPBAND_EDGE = 0.575
STOPBAND_ATTENUATION_DB = 75.0


def kaiser_beta(attenuation_db: float) -> float:
    # Kaiser's empirical formula (Oppenheim & Schafer, 7.76).
    if attenuation_db > 50:
        return 0.1102 * (attenuation_db - 8.7)
    if attenuation_db >= 21:
        return 0.5842 * (attenuation_db - 21) ** 0.4 + 0.07886 * (attenuation_db - 21)
    return 0.0


def design_lowpass(
    rate: int, cutoff: float, transition: float, attenuation_db: float
) -> npt.NDArray[np.float64]:
    """
    Kaiser-windowed sinc lowpass at ``rate`` Hz with unity DC gain.

    ``cutoff`` is the -6 dB point and ``transition`` the full transition width,
    both in Hz.
    """
    delta_omega = 2 * pi * transition / rate
    numtaps = int(ceil((attenuation_db - 7.95) / (2.285 * delta_omega))) + 1
    n = np.arange(numtaps) - (numtaps - 1) / 2
    fc = cutoff / rate
    h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(numtaps, kaiser_beta(attenuation_db))
    return np.asarray(h / h.sum(), dtype=np.float64)


class Resampler:
    """
    Convert a stream of int16 samples from ``in_rate`` to ``out_rate``.

    Upsample by L, lowpass, downsample by M -- computed as L interleaved
    polyphase branches so that no zero-stuffed or discarded samples are ever
    computed. The last taps-1 input samples and the output phase are carried
    over between calls, so splitting the input into frames of any size gives
    exactly the same output as processing it in one go.

    A 20 ms frame in gives a 20 ms frame out for the usual telephony rates.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("Sample rates must be positive")
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = gcd(in_rate, out_rate)
        self._up = out_rate // g
        self._down = in_rate // g
        if self._up == self._down:
            self._taps = 1
            self._filter_length = 1
            self._phases = np.ones((1, 1), dtype=np.float32)
        else:
            low = min(in_rate, out_rate)
            h = design_lowpass(
                in_rate * self._up,
                cutoff=low * (PASSBAND_EDGE + STOPBAND_EDGE) / 2,
                transition=low * (STOPBAND_EDGE - PASSBAND_EDGE),
                attenuation_db=STOPBAND_ATTENUATION_DB,
            )
            self._filter_length = len(h)
            self._taps = int(ceil(len(h) / self._up))
            padded = np.zeros(self._taps * self._up)
            padded[: len(h)] = h * self._up  # zero stuffing loses a factor L of gain
            # _phases[p] holds h[p], h[p+L], ... reversed so that it can be
            # dotted directly with a forward window of the input.
            self._phases = padded.reshape(self._taps, self._up).T[:, ::-1].astype(np.float32)
        self._history = np.zeros(self._taps - 1, dtype=np.float32)
        # position of the next output sample, in upsampled units, relative to
        # the first sample of the next input chunk
        self._t = 0

    @property
    def delay(self) -> float:
        """Group delay of the filter in seconds."""
        return (self._filter_length - 1) / 2 / (self.in_rate * self._up)

    def process(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        if self._up == self._down:
            return np.array(samples, dtype=np.int16)

        up, down, taps = self._up, self._down, self._taps
        count = len(samples)
        buf = np.concatenate((self._history, samples.astype(np.float32)))

        end = count * up
        n_out = max(0, -(-(end - self._t) // down))
        if down == 1:
            # pure interpolation: each input sample yields one output per
            # branch, so all branches are one matrix product
            out = (self._windows(buf, 0, count, 1) @ self._phases.T).ravel()
        else:
            out = np.empty(n_out, dtype=np.float32)
            for r in range(min(up, n_out)):
                # every up-th output shares one polyphase branch and advances
                # the input by `down` samples
                base, phase = divmod(self._t + r * down, up)
                rows = self._windows(buf, base, len(range(r, n_out, up)), down)
                out[r::up] = rows @ self._phases[phase]

        self._t += n_out * down - end
        if taps > 1:
            self._history = buf[len(buf) - (taps - 1) :]
        return np.rint(out, out=out).clip(-32768, 32767).astype(np.int16)

    def _windows(
        self, buf: npt.NDArray[np.float32], start: int, rows: int, step: int
    ) -> npt.NDArray[np.float32]:
        """
        Rows of ``taps`` consecutive samples starting at ``start``,
        ``start + step``, ... copied into a contiguous matrix so that the dot
        product runs in BLAS. (A raw ndarray view is much cheaper to build
        than sliding_window_view.)
        """
        itemsize = buf.itemsize
        view: npt.NDArray[np.float32] = np.ndarray(
            (rows, self._taps),
            dtype=np.float32,
            buffer=buf,
            offset=start * itemsize,
            strides=(step * itemsize, itemsize),
        )
        return np.ascontiguousarray(view)
