"""In-band DTMF detector against ITU-T Q.24's receiver figures and what a call does to tones.

Tones go through G.711 mu-law as they arrive from a SIP side, in 20 ms frames as the
jitter buffer hands them on: a lost frame is concealed by repeating the last one faded
(rtc.jitterbuffer.CONCEAL_GAINS), and pass-through feeds the detector packets as they
arrive, so reordered and duplicated ones too.
"""

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from rtc.dtmf import DIGITS
from rtc.dtmfdetect import COLUMNS, KEYS, ROWS, DtmfDetector
from rtc.g711 import ulaw_decode, ulaw_encode
from rtc.tones import dtmf_tone

RATE = 8000
FRAME = 160
Frames = list[npt.NDArray[np.int16]]


def frames_of(*parts: npt.NDArray[np.floating] | npt.NDArray[np.int16]) -> Frames:
    """The parts one after the other, through mu-law, as 20 ms frames."""
    signal = np.clip(np.rint(np.concatenate(parts)), -32768, 32767).astype(np.int16)
    signal = ulaw_decode(ulaw_encode(signal))
    return [signal[i : i + FRAME] for i in range(0, len(signal) - FRAME + 1, FRAME)]


def detect(frames: Frames) -> list[str]:
    detector = DtmfDetector()
    return [digit for frame in frames for digit in detector.process(frame)]


def silence(ms: float) -> npt.NDArray[np.int16]:
    return np.zeros(round(RATE * ms / 1000), dtype=np.int16)


def dual(
    digit: str,
    ms: int,
    *,
    low_dbm0: float = -10.0,
    twist_db: float = 0.0,
    low_off: float = 0.0,
    high_off: float = 0.0,
    phase: float = 0.0,
    ramp_ms: float = 4.0,
) -> npt.NDArray[np.float64]:
    """A key's tones, each off its frequency by a fraction, the high one twist_db louder,
    with raised-cosine edges (as rtc.tones.dtmf_tone)."""
    row = next(r for r, keys in enumerate(KEYS) if digit in keys)
    low, high = ROWS[row] * (1 + low_off), COLUMNS[KEYS[row].index(digit)] * (1 + high_off)
    # mu-law: a full-scale sine is +3.17 dBm0
    amplitude = 32767 * 10 ** ((low_dbm0 - 3.17) / 20)
    t = np.arange(RATE * ms // 1000) / RATE
    tone = amplitude * (
        np.sin(2 * np.pi * low * t + phase)
        + 10 ** (twist_db / 20) * np.sin(2 * np.pi * high * t + 2.1 * phase)
    )
    ramp = round(RATE * ramp_ms / 1000)
    if ramp:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        tone[:ramp] *= edge
        tone[-ramp:] *= edge[::-1]
    return tone


def concealed(frame: npt.NDArray[np.int16], gain: float) -> npt.NDArray[np.int16]:
    return np.rint(frame * gain).astype(np.int16)


# what happens to frame k of a key press on its way to the detector
DISTURBANCES: dict[str, Callable[[Frames, int], Frames]] = {
    "lost, concealed": lambda f, k: [*f[:k], concealed(f[k - 1], 0.9), *f[k + 1 :]],
    "two lost, concealed": lambda f, k: [
        *f[:k],
        concealed(f[k - 1], 0.9),
        concealed(f[k - 1], 0.6),
        *f[k + 2 :],
    ],
    "lost, not concealed": lambda f, k: [*f[:k], *f[k + 1 :]],
    "reordered": lambda f, k: [*f[:k], f[k + 1], f[k], *f[k + 2 :]],
    "duplicated": lambda f, k: [*f[: k + 1], f[k], *f[k + 1 :]],
}


@pytest.mark.parametrize("kind", DISTURBANCES)
def test_disturbed_packet_inside_a_key_press_counts_it_once(kind: str) -> None:
    # a phase jump spoils the windows around it; the key press must go on
    # through them instead of ending and starting again
    wrong = []
    for digit in DIGITS:
        for lead_ms in (0, 5, 11):
            frames = frames_of(silence(lead_ms), dtmf_tone(digit, 200), silence(100))
            for k in (3, 5, 7):  # frames 2-9 are inside the tone
                got = detect(DISTURBANCES[kind](frames, k))
                if got != [digit]:
                    wrong.append((digit, lead_ms, k, got))
    assert wrong == []


def test_same_key_after_a_40_ms_pause_counts_twice_a_10_ms_interruption_once() -> None:
    # Q.24: 40 ms pauses separate key presses, interruptions up to 10 ms do not
    for digit in "5#D":
        for lead_ms in range(0, 20, 3):
            tone = dtmf_tone(digit, 40)
            frames = frames_of(silence(lead_ms), tone, silence(40), tone, silence(100))
            assert detect(frames) == [digit, digit], (digit, lead_ms)
            interrupted = dtmf_tone(digit, 200)
            interrupted[800:880] = 0
            assert detect(frames_of(silence(lead_ms), interrupted, silence(100))) == [digit]


@pytest.mark.parametrize("twist_db", [4.0, 5.0, 6.0, 8.0, -6.0, -8.0])
def test_twist_within_limits_detected(twist_db: float) -> None:
    # forward twist (high tone louder) is the usual case; 2 x 697 Hz lies 58 Hz
    # from 1336 Hz and 2 x 770 Hz 63 Hz from 1477 Hz, where that louder tone
    # leaks: the second-harmonic check must not take it for a voice's harmonic
    wrong = []
    for digit in DIGITS:
        for ms in (40, 60):
            for lead_ms, phase in ((0, 0.0), (6, 1.5), (13, 3.0)):
                tone = dual(digit, ms, low_dbm0=-20, twist_db=twist_db, phase=phase)
                got = detect(frames_of(silence(lead_ms), tone, silence(100)))
                if got != [digit]:
                    wrong.append((digit, ms, lead_ms, got))
    assert wrong == []


def test_twist_beyond_limits_rejected() -> None:
    for digit in "26D":
        for twist_db in (11.0, -11.0):
            tone = dual(digit, 100, low_dbm0=-20, twist_db=twist_db)
            assert detect(frames_of(tone, silence(100))) == [], (digit, twist_db)


@pytest.mark.parametrize(
    ("low_off", "high_off"),
    [(0.015, 0.015), (-0.015, -0.015), (0.015, -0.015), (-0.015, 0.015), (0.0, 0.015)],
)
def test_tones_1_5_percent_off_detected(low_off: float, high_off: float) -> None:
    # Q.24: operate within 1.5 %; 1.5 % of 1633 Hz is 0.63 of a 39 Hz bin,
    # where a bin at the nominal frequency holds a fifth of the tone's power
    wrong = []
    for digit in DIGITS:
        # a 40 ms tone starts or ends inside one of the two windows that
        # start the digit: the frequency must read the same in both
        for ms, lead_ms in [(40, lead_ms) for lead_ms in range(0, 13, 2)] + [(100, 9)]:
            tone = dual(digit, ms, low_off=low_off, high_off=high_off, phase=lead_ms / 3)
            got = detect(frames_of(silence(lead_ms), tone, silence(100)))
            if got != [digit]:
                wrong.append((digit, ms, got))
    assert wrong == []


@pytest.mark.parametrize(
    ("low_off", "high_off"),
    [(0.035, 0.0), (-0.035, 0.0), (0.0, 0.035), (0.0, -0.035), (0.035, 0.035)],
)
def test_tones_3_5_percent_off_rejected(low_off: float, high_off: float) -> None:
    # Q.24: no operation from 3.5 %, whichever tone is off
    found = {}
    for digit in DIGITS:
        tone = dual(digit, 200, low_off=low_off, high_off=high_off)
        got = detect(frames_of(silence(7), tone, silence(100)))
        if got:
            found[digit] = got
    assert found == {}


def test_40_ms_key_press_detected_in_every_alignment() -> None:
    # Q.24's shortest tone, with the 4 ms ramps of the gateway's own generator:
    # in some alignments it fills neither edge window to the full share
    missed = []
    for digit in DIGITS:
        for lead in range(0, 102, 3):
            got = detect(frames_of(np.zeros(lead), dtmf_tone(digit, 40), silence(100)))
            if got != [digit]:
                missed.append((digit, lead, got))
    assert missed == []


@pytest.mark.parametrize("ms", [20, 24])
def test_short_tones_rejected_in_every_alignment(ms: int) -> None:
    # hard edges, so nothing of the tone is lost to a ramp
    for digit in "1D":
        for lead in range(0, 102, 3):
            tone = dual(digit, ms, phase=lead / 10, ramp_ms=0)
            assert detect(frames_of(np.zeros(lead), tone, silence(100))) == [], (digit, lead)


def voiced(f0: npt.NDArray[np.float64], formants: tuple[float, float]) -> npt.NDArray[np.float64]:
    """A harmonic series on pitch f0 (per sample) through two formants."""
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    signal = np.zeros(len(f0))
    for k in range(1, 40):
        fk = k * f0
        gain = 1 / (1 + ((fk - formants[0]) / 90) ** 2) + 0.7 / (
            1 + ((fk - formants[1]) / 135) ** 2
        )
        signal += gain * np.sin(k * phase) * (fk < 3800)
    return signal * 8000 / np.sqrt(np.mean(signal**2))


# a voice whose formants pick two harmonics near a key's tones: its pitch is
# steady, or glides through the key's frequencies
VOICES = {
    # 3 x and 4 x 306.8 Hz: 2.2 % and 1.5 % from * (941, 1209 Hz)
    "beyond the tolerance": (np.full(RATE, 306.8), (920, 1230)),
    # 5 x and 8 x 170 Hz: 0.2 % and 1.8 % from 8 (852, 1336 Hz), holding 81 % of
    # the energy; a key's tones hold 97 % of it even 15 dB above noise
    "other harmonics left": (np.full(RATE, 170.0), (850, 1360)),
    # 4 x and 7 x a pitch gliding from 226 to 244 Hz in 100 ms sweep through D
    # (941, 1633 Hz), 1 % a window: a key's tones keep their frequencies
    "gliding": (np.interp(np.arange(RATE // 2), (1200, 2000), (226, 244)), (960, 1640)),
}


@pytest.mark.parametrize("voice", VOICES)
def test_voice_harmonics_near_a_key_are_not_a_digit(voice: str) -> None:
    f0, formants = VOICES[voice]
    assert detect(frames_of(voiced(f0, formants))) == []


def test_talk_off_synthetic_voices_and_two_note_music() -> None:
    # voiced speech-like clips: gliding pitch 80-350 Hz, random formants
    rng = np.random.default_rng(1)
    false = []
    for clip in range(60):
        t = np.arange(2 * RATE) / RATE
        f0 = rng.uniform(80, 350) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        formants = (rng.uniform(300, 1000), rng.uniform(900, 2500))
        got = detect(frames_of(voiced(f0, formants)))
        if got:
            false.append((clip, got))
    assert false == []
    # two notes of the equal-tempered scale, each with two harmonics
    notes = 440 * 2 ** (np.arange(-12, 25) / 12)
    t = np.arange(int(RATE * 0.3)) / RATE
    for a in notes:
        for b in notes[notes > a * 1.5]:
            x = sum(
                0.5**h * (np.sin(2 * np.pi * a * (h + 1) * t) + np.sin(2 * np.pi * b * (h + 1) * t))
                for h in range(3)
            )
            assert detect(frames_of(x * 6000 / np.std(x))) == [], (a, b)
