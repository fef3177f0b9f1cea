import numpy as np
import numpy.typing as npt
import pytest

from rtc.tones import CADENCES, TONES, RingbackGenerator, ToneGenerator
from tests.audio import band_energy_ratio, dominant_frequency, on_off_runs


def generate(country: str, rate: int, seconds: float) -> npt.NDArray[np.int16]:
    generator = RingbackGenerator(country, rate)
    frames = [generator.frame() for _ in range(int(seconds * 50))]
    assert all(len(f) == rate // 50 and f.dtype == np.int16 for f in frames)
    return np.concatenate(frames)


@pytest.mark.parametrize(
    ("country", "frequencies", "pattern"),
    [
        ("us", (440, 480), [2.0, 4.0]),
        ("uk", (400, 450), [0.4, 0.2, 0.4, 2.0]),
        ("de", (425,), [1.0, 4.0]),
        ("fr", (440,), [1.5, 3.5]),
        ("jp", (400,), [1.0, 2.0]),
    ],
)
@pytest.mark.parametrize("rate", [8000, 48000])
def test_frequencies_and_cadence(
    country: str, frequencies: tuple[int, ...], pattern: list[float], rate: int
) -> None:
    cycle = sum(pattern)
    x = generate(country, rate, 2 * cycle)
    runs = on_off_runs(x, rate)
    expected = [(i % 2 == 0, d) for i, d in enumerate(pattern)] * 2
    assert [on for on, _ in runs] == [on for on, _ in expected]
    for (_, measured), (_, wanted) in zip(runs, expected, strict=True):
        assert measured == pytest.approx(wanted, abs=0.015)

    first_on = x[: int(pattern[0] * rate)]
    in_band = sum(band_energy_ratio(first_on, rate, f, 20) for f in frequencies)
    if country == "jp":
        # 400 Hz amplitude-modulated at 16 Hz: carrier plus 384/416 Hz sidebands
        assert dominant_frequency(first_on, rate) == pytest.approx(400, abs=2)
        assert in_band > 0.98
    else:
        assert in_band > 0.99
        for f in frequencies:
            assert band_energy_ratio(first_on, rate, f, 10) > 0.95 / len(frequencies)


def test_level_and_phase_continuity() -> None:
    x = generate("de", 8000, 1.0).astype(float)
    steady = x[400:7600]
    # about -20 dBFS peak, and no sample-to-sample jump bigger than a 425 Hz
    # sine can make: frame boundaries join seamlessly
    assert np.abs(steady).max() == pytest.approx(0.1 * 32767, rel=0.01)
    limit = 2 * np.pi * 425 / 8000 * 0.1 * 32767 * 1.01
    assert np.abs(np.diff(x)).max() < limit


def test_frames_equal_one_long_signal() -> None:
    x = generate("us", 48000, 0.5)
    n = np.arange(len(x))
    ideal = (
        0.1 * 32767 * (np.sin(2 * np.pi * 440 * n / 48000) + np.sin(2 * np.pi * 480 * n / 48000))
    )
    steady = slice(48000 * 4 // 1000, len(x))  # after the onset ramp
    assert np.abs(x[steady] - ideal[steady]).max() <= 1


def test_edges_are_ramped_not_clicked() -> None:
    x = generate("uk", 8000, 1.0).astype(float)
    # the first samples after switching on must rise gradually
    assert abs(x[0]) < 50 and np.abs(x[:8]).max() < 0.3 * np.abs(x[:400]).max()


def test_unknown_country() -> None:
    with pytest.raises(ValueError):
        RingbackGenerator("xx")
    assert {"us", "uk", "de", "eu", "fr", "jp"} <= set(CADENCES)
    assert RingbackGenerator("US").cadence == CADENCES["us"]


@pytest.mark.parametrize("country", sorted(CADENCES))
def test_shortcuts_match_the_shaped_signal(country: str) -> None:
    # frames wholly inside a burst or a pause skip the envelope: they must be
    # exactly what the envelope would give
    rate = 8000
    generator = RingbackGenerator(country, rate)
    cycle = round(sum(generator.cadence.pattern) * rate)
    x = generate(country, rate, 2 * cycle / rate)
    n = np.arange(len(x))
    table = generator._table[n % rate].astype(float)
    reference = np.rint(table * generator._envelope(n % cycle)).astype(np.int16)
    assert np.array_equal(x, reference)


@pytest.mark.parametrize("tone", ["busy", "congestion", "call-waiting", "ringback"])
@pytest.mark.parametrize("country", ["us", "uk", "de", "eu", "fr", "jp"])
def test_progress_tones_follow_their_cadence(tone: str, country: str) -> None:
    cadence = TONES[tone][country]
    generator = ToneGenerator(tone, country, 8000)
    cycle = round(sum(cadence.pattern) * 50)
    signal = np.concatenate([generator.frame() for _ in range(cycle)]).astype(np.float64)
    first_on = round(cadence.pattern[0] * 8000)
    burst = signal[80 : first_on - 80]
    assert np.sqrt(np.mean(burst**2)) > 0.03 * 32768
    pause = signal[first_on + 80 : first_on + round(cadence.pattern[1] * 8000) - 80]
    assert np.all(pause == 0)
    if not cadence.modulation:
        peak = dominant_frequency(burst, 8000)
        assert min(abs(peak - f) for f in cadence.frequencies) < 5


def test_unknown_tone() -> None:
    with pytest.raises(ValueError):
        ToneGenerator("howler")
    with pytest.raises(ValueError):
        ToneGenerator("busy", "xx")


@pytest.mark.parametrize("tone", ["busy", "congestion"])
def test_japans_busy_and_congestion_tones_are_steady_400_hz(tone: str) -> None:
    # not the 16 Hz modulated 400 Hz of its ringback: a steady burst
    generator = ToneGenerator(tone, "jp", 8000)
    burst = np.concatenate([generator.frame() for _ in range(25)])[160:3840].astype(np.float64)
    levels = [np.sqrt(np.mean(burst[i : i + 80] ** 2)) for i in range(0, len(burst) - 80, 80)]
    assert max(levels) < 1.05 * min(levels)
    assert abs(dominant_frequency(burst, 8000) - 400) < 5
