"""Audio helpers for tests: generate known signals, then check what arrived.

All functions take and return mono numpy arrays. int16 input is treated as PCM with full
scale 32768; float input as already normalised to [-1, 1].
"""

from __future__ import annotations

import numpy as np

FULL_SCALE = 32768.0


def as_float(x: np.ndarray) -> np.ndarray:
    """Mono samples as float64 in [-1, 1] (int16 is scaled by 1/32768)."""
    a = np.asarray(x)
    if a.ndim != 1:
        a = a.reshape(-1)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float64) / FULL_SCALE
    return a.astype(np.float64)


def sine(
    freq: float,
    duration: float,
    rate: int = 48000,
    amplitude: float = 0.5,
    phase: float = 0.0,
    dtype: type = np.int16,
) -> np.ndarray:
    """A sine of `freq` Hz lasting `duration` seconds; amplitude relative to full scale."""
    n = int(round(duration * rate))
    t = np.arange(n, dtype=np.float64) / rate
    y = amplitude * np.sin(2.0 * np.pi * freq * t + phase)
    if np.dtype(dtype) == np.int16:
        return np.clip(np.round(y * FULL_SCALE), -32768, 32767).astype(np.int16)
    return y.astype(dtype)


class SineSource:
    """A continuous sine cut into frames (phase carries across frames: no clicks)."""

    def __init__(self, freq: float, rate: int = 48000, amplitude: float = 0.5) -> None:
        self.freq = float(freq)
        self.rate = rate
        self.amplitude = amplitude
        self._n = 0

    def frame(self, samples: int) -> np.ndarray:
        t = (np.arange(samples, dtype=np.float64) + self._n) / self.rate
        self._n += samples
        y = self.amplitude * np.sin(2.0 * np.pi * self.freq * t)
        return np.clip(np.round(y * FULL_SCALE), -32768, 32767).astype(np.int16)


def rms(x: np.ndarray) -> float:
    """Root mean square relative to full scale (0.0 for empty input)."""
    a = as_float(x)
    if a.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(a * a)))


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale sine is -3.01 dBFS); -inf for silence."""
    r = rms(x)
    return float(20.0 * np.log10(r)) if r > 0 else float("-inf")


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    """The frequency (Hz) of the strongest spectral peak, ignoring DC.

    Hann window, then parabolic interpolation of the log magnitude around the peak bin,
    so the estimate is well inside one bin for a clean tone.
    """
    a = as_float(x)
    if a.size < 16:
        raise ValueError("need at least 16 samples")
    a = a - a.mean()
    spectrum = np.abs(np.fft.rfft(a * np.hanning(a.size)))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    offset = 0.0
    if 0 < k < spectrum.size - 1:
        lo, mid, hi = (np.log(spectrum[i] + 1e-12) for i in (k - 1, k, k + 1))
        denom = lo - 2.0 * mid + hi
        if denom != 0.0:
            offset = 0.5 * (lo - hi) / denom
    return float((k + offset) * rate / a.size)


def band_energy_ratio(x: np.ndarray, rate: int, freq: float, width: float = 50.0) -> float:
    """Share of the signal's energy (excluding DC) within freq +- width Hz, 0..1."""
    a = as_float(x)
    a = a - a.mean()
    power = np.abs(np.fft.rfft(a * np.hanning(a.size))) ** 2
    freqs = np.fft.rfftfreq(a.size, 1.0 / rate)
    power[0] = 0.0
    total = float(power.sum())
    if total <= 0.0:
        return 0.0
    band = (freqs >= freq - width) & (freqs <= freq + width)
    return float(power[band].sum() / total)


def align(reference: np.ndarray, received: np.ndarray, max_lag: int | None = None) -> int:
    """The lag (samples) at which `received` best matches `reference`.

    A positive lag means `received` is delayed: received[lag + i] ~ reference[i].
    Uses FFT cross-correlation; `max_lag` bounds |lag| when given.
    """
    ref = as_float(reference)
    rec = as_float(received)
    ref = ref - ref.mean()
    rec = rec - rec.mean()
    n = ref.size + rec.size - 1
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)
    # corr[k] for lag k >= 0 at index k, negative lags wrap around to the end.
    lags = np.concatenate((np.arange(0, rec.size), np.arange(-(ref.size - 1), 0)))
    values = np.concatenate((corr[: rec.size], corr[size - (ref.size - 1) :]))
    if max_lag is not None:
        keep = np.abs(lags) <= max_lag
        lags, values = lags[keep], values[keep]
    return int(lags[int(np.argmax(values))])


def normalized_xcorr(
    reference: np.ndarray, received: np.ndarray, max_lag: int | None = None
) -> tuple[float, int]:
    """Delay-aligned normalised cross-correlation: (coefficient in [-1, 1], lag in samples).

    The received signal is aligned to the reference at the best lag, the overlapping part
    of both is compared, and the Pearson correlation of that overlap is returned.
    """
    lag = align(reference, received, max_lag)
    ref = as_float(reference)
    rec = as_float(received)
    if lag >= 0:
        rec = rec[lag:]
    else:
        ref = ref[-lag:]
    n = min(ref.size, rec.size)
    if n < 2:
        return 0.0, lag
    a = ref[:n] - ref[:n].mean()
    b = rec[:n] - rec[:n].mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    if denom == 0.0:
        return 0.0, lag
    return float(np.sum(a * b) / denom), lag


def speech_like(
    duration: float, rate: int = 8000, seed: int = 0, amplitude: float = 0.3
) -> np.ndarray:
    """A voiced, speech-like int16 signal for talk-off tests.

    Additive synthesis of a gliding fundamental (80-260 Hz, as male to female voices)
    with harmonics shaped by vowel formants that change every 150-300 ms, syllable
    amplitude envelopes and a little breath noise: rich in harmonics that sweep through
    the DTMF bands, as real speech does.
    """
    rng = np.random.default_rng(seed)
    n = int(round(duration * rate))
    t = np.arange(n) / rate
    # fundamental: slow random glide between 80 and 260 Hz
    knots = rng.uniform(80, 260, size=int(duration * 4) + 2)
    f0 = np.interp(t, np.linspace(0, duration, knots.size), knots)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    # vowel formants (F1, F2, F3) per segment
    vowels = np.array(
        [
            [730, 1090, 2440],
            [270, 2290, 3010],
            [300, 870, 2240],
            [530, 1840, 2480],
            [660, 1720, 2410],
            [570, 840, 2410],
        ]
    )
    seg_ends = np.cumsum(rng.uniform(0.15, 0.3, size=int(duration / 0.15) + 2))
    seg = np.searchsorted(seg_ends, t)
    formants = vowels[rng.integers(0, len(vowels), size=seg_ends.size + 1)][seg]
    y = np.zeros(n)
    for k in range(1, 40):
        fk = k * f0
        gain = sum(1.0 / (1.0 + ((fk - formants[:, i]) / 90.0) ** 2) * (0.6**i) for i in range(3))
        gain = gain * (fk < rate / 2) / k**0.5
        y += gain * np.sin(k * phase)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28))
    y = y * envelope + 0.02 * rng.standard_normal(n)
    y *= amplitude / np.sqrt(np.mean(y * y)) / np.sqrt(2)
    return np.clip(np.round(y * FULL_SCALE), -32768, 32767).astype(np.int16)


def on_off_runs(x: np.ndarray, rate: int, threshold: float = 100.0) -> list[tuple[bool, float]]:
    """Runs of tone and silence in 10 ms blocks (on: RMS above ``threshold``), as (on, seconds)."""
    block = rate // 100
    # in the samples' own units (int16: the threshold too)
    blocks = np.asarray(x[: len(x) // block * block], dtype=np.float64).reshape(-1, block)
    on = np.sqrt(np.mean(blocks**2, axis=1)) > threshold
    runs: list[tuple[bool, float]] = []
    for value in on:
        if runs and runs[-1][0] == value:
            runs[-1] = (bool(value), runs[-1][1] + 0.01)
        else:
            runs.append((bool(value), 0.01))
    return runs
