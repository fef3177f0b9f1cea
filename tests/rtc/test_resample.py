import time

import numpy as np
import numpy.typing as npt
import pytest

from rtc.resample import Resampler
from tests.audio import dominant_frequency, sine

PAIRS = [(48000, 8000), (8000, 48000), (48000, 16000), (16000, 48000), (16000, 8000), (8000, 16000)]


def level_db(x: npt.NDArray[np.int16]) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(float) ** 2)) + 1e-9))


def tone_through(
    resampler: Resampler, freq: float, amplitude: float = 0.5
) -> npt.NDArray[np.int16]:
    """One second of tone, in 20 ms frames; the first 100 ms of output dropped."""
    x = sine(freq, 1.0, resampler.in_rate, amplitude)
    step = resampler.in_rate // 50
    y = np.concatenate([resampler.process(x[i : i + step]) for i in range(0, len(x), step)])
    return y[resampler.out_rate // 10 :]


def spectrum_db(
    y: npt.NDArray[np.int16], rate: int
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    window = np.blackman(len(y))
    magnitude = np.abs(np.fft.rfft(y.astype(float) * window)) / window.sum() * 2
    return np.fft.rfftfreq(len(y), 1 / rate), 20 * np.log10(magnitude / 32768 + 1e-12)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(48000, 8000), (8000, 48000), (16000, 8000)])
def test_passband_is_flat_to_3400_hz(in_rate: int, out_rate: int) -> None:
    reference = level_db(sine(1000, 1.0, out_rate, 0.5))
    levels = [
        level_db(tone_through(Resampler(in_rate, out_rate), f)) - reference
        for f in range(100, 3401, 100)
    ]
    assert max(levels) - min(levels) < 0.5
    assert max(abs(level) for level in levels) < 0.25


def test_decimation_rejects_aliases_by_60_db() -> None:
    # anything above 4.6 kHz folds back into 0..3.4 kHz at 8 kHz; it must be
    # at least 60 dB below a full-level passband tone
    for freq in [4600, 5000, 6000, 7000, 8000, 9500, 12000, 15000, 17500, 20000]:
        y = tone_through(Resampler(48000, 8000), freq)
        assert level_db(y) - level_db(sine(1000, 1.0, 8000, 0.5)) < -60, freq


def test_interpolation_rejects_images_by_60_db() -> None:
    for freq in [300, 1000, 2000, 3000, 3400]:
        y = tone_through(Resampler(8000, 48000), freq)
        freqs, db = spectrum_db(y, 48000)
        peak = db.max()
        assert freqs[np.argmax(db)] == pytest.approx(freq, abs=5)
        assert db[freqs >= 4600].max() < peak - 60, freq


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frames_in_give_frames_out(in_rate: int, out_rate: int) -> None:
    resampler = Resampler(in_rate, out_rate)
    for _ in range(10):
        assert len(resampler.process(np.zeros(in_rate // 50, dtype=np.int16))) == out_rate // 50


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_chunked_equals_one_go(in_rate: int, out_rate: int) -> None:
    x = sine(1234, 2.0, in_rate, 0.7)
    whole = Resampler(in_rate, out_rate).process(x)
    resampler = Resampler(in_rate, out_rate)
    step = in_rate // 50
    chunked = np.concatenate([resampler.process(x[i : i + step]) for i in range(0, len(x), step)])
    assert len(chunked) == len(whole) == 2 * out_rate
    assert np.abs(chunked.astype(int) - whole).max() <= 1
    # odd chunk sizes too: the filter phase carries across calls
    resampler = Resampler(in_rate, out_rate)
    cuts = np.cumsum([0] + [7, 333, 1, 960, 95, 2000])
    parts = [resampler.process(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    parts.append(resampler.process(x[cuts[-1] :]))
    assert np.abs(np.concatenate(parts).astype(int) - whole).max() <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_no_clicks_at_frame_boundaries(in_rate: int, out_rate: int) -> None:
    # the output must be the same sine, delayed by the filter: any
    # discontinuity at a frame boundary would show up in the residual
    freq, amplitude = 997.0, 0.5
    resampler = Resampler(in_rate, out_rate)
    y = tone_through(resampler, freq, amplitude).astype(float)
    n = np.arange(len(y)) + out_rate // 10
    expected = amplitude * 32768 * np.sin(2 * np.pi * freq * (n / out_rate - resampler.delay))
    residual = np.abs(y - expected)
    assert residual.max() < 32768 * amplitude * 10 ** (-70 / 20)


def test_identity_copies() -> None:
    x = sine(440, 0.02, 8000)
    y = Resampler(8000, 8000).process(x)
    assert np.array_equal(x, y) and y is not x


def test_other_ratio_keeps_frequency() -> None:
    y = tone_through(Resampler(44100, 48000), 1000)
    assert dominant_frequency(y, 48000) == pytest.approx(1000, abs=2)


def test_clips_instead_of_wrapping() -> None:
    # full-scale square waves overshoot after filtering (Gibbs)
    x = np.tile(np.array([32767] * 40 + [-32768] * 40, dtype=np.int16), 12)
    y = Resampler(48000, 8000).process(x)
    assert y.max() == 32767 and y.min() == -32768
    assert np.all(np.abs(np.diff(y.astype(int))) < 65535)


def test_invalid_rates() -> None:
    with pytest.raises(ValueError):
        Resampler(0, 8000)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(48000, 8000), (8000, 48000)])
def test_is_fast_enough(in_rate: int, out_rate: int) -> None:
    # a generous bound: it runs per 20 ms per direction per call
    resampler = Resampler(in_rate, out_rate)
    frame = sine(1000, 0.02, in_rate)
    start = time.perf_counter()
    for _ in range(200):
        resampler.process(frame)
    assert (time.perf_counter() - start) / 200 < 500e-6
