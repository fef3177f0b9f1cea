"""RFC 4733 telephone-event packets, digit schedules and in-band DTMF detection."""

import numpy as np
import numpy.typing as npt
import pytest

from rtc.dtmf import (
    DIGITS,
    DtmfEventReceiver,
    TelephoneEvent,
    digit_to_event,
    event_packets,
    event_to_digit,
)
from rtc.dtmfdetect import DtmfDetector
from rtc.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from rtc.tones import DTMF_FREQUENCIES, dtmf_tone
from tests.audio import dominant_frequency, speech_like


@pytest.mark.parametrize(
    ("data", "event"),
    [
        # RFC 4733 figure 1 layout: event, E|R|volume, duration
        (b"\x05\x0a\x01\x90", TelephoneEvent(5, False, 10, 400)),
        (b"\x0b\x8a\x03\x20", TelephoneEvent(11, True, 10, 800)),
        (b"\x00\x3f\xff\xff", TelephoneEvent(0, False, 63, 65535)),
        (b"\x10\x00\x00\x00", TelephoneEvent(16, False, 0, 0)),
    ],
)
def test_telephone_event_golden(data: bytes, event: TelephoneEvent) -> None:
    assert TelephoneEvent.parse(data) == event
    assert bytes(event) == data


def test_telephone_event_parse_ignores_reserved_bit_and_stacked_events() -> None:
    assert TelephoneEvent.parse(b"\x01\xca\x00\xa0\x02\x0a\x00\xa0") == TelephoneEvent(
        1, True, 10, 160
    )
    with pytest.raises(ValueError):
        TelephoneEvent.parse(b"\x01\x0a\x00")
    with pytest.raises(ValueError):
        TelephoneEvent(1, volume=64)
    with pytest.raises(ValueError):
        TelephoneEvent(1, duration=70000)


def test_digit_mapping() -> None:
    assert [digit_to_event(d) for d in DIGITS] == list(range(16))
    assert digit_to_event("a") == 12
    assert event_to_digit(11) == "#"
    assert event_to_digit(16) is None  # flash
    for bad in ("E", "", "12"):
        with pytest.raises(ValueError):
            digit_to_event(bad)


def test_schedule_updates_every_50_ms_and_three_end_packets() -> None:
    # 8 kHz: 100 ms = 800 samples, updates every 400, end packets 160 apart
    schedule = event_packets("7", 800, update_interval=400, end_interval=160)
    assert schedule == [
        (400, TelephoneEvent(7, False, 10, 400)),
        (800, TelephoneEvent(7, True, 10, 800)),
        (960, TelephoneEvent(7, True, 10, 800)),
        (1120, TelephoneEvent(7, True, 10, 800)),
    ]
    long = event_packets("#", 2000, 400, 160)
    assert [e.duration for _, e in long if not e.end] == [400, 800, 1200, 1600]
    assert [e.end for _, e in long][-3:] == [True] * 3


def test_receiver_reports_each_event_once() -> None:
    receiver = DtmfEventReceiver()
    digits = []
    for timestamp, digit in ((1000, "1"), (2000, "1"), (3000, "#")):
        for _, event in event_packets(digit, 800, 400, 160):
            event.event = digit_to_event(digit)
            digits.append(receiver.feed(42, timestamp, bytes(event)))
    assert [d for d in digits if d] == ["1", "1", "#"]
    # a lost start: only end packets arrive, still reported once
    end = bytes(TelephoneEvent(9, True, 10, 800))
    assert [receiver.feed(42, 5000, end) for _ in range(3)] == ["9", None, None]
    assert receiver.feed(42, 6000, b"\x01") is None  # garbage


def run_detector(signal: npt.NDArray[np.int16], frame: int = 160) -> list[str]:
    detector = DtmfDetector()
    digits: list[str] = []
    for start in range(0, len(signal), frame):
        digits += detector.process(signal[start : start + frame])
    return digits


def keyed(digits: str, on_ms: int = 100, off_ms: int = 60) -> npt.NDArray[np.int16]:
    gap = np.zeros(8 * off_ms, dtype=np.int16)
    return np.concatenate([np.concatenate((dtmf_tone(d, on_ms), gap)) for d in digits])


def test_dtmf_tone_frequencies() -> None:
    for digit, (low, high) in DTMF_FREQUENCIES.items():
        tone = dtmf_tone(digit, 200).astype(np.float64)
        assert dominant_frequency(tone, 8000) == pytest.approx(high, abs=3)
        # removing the high tone leaves the low one
        t = np.arange(len(tone)) / 8000
        rest = tone - 0.315 * 32767 * np.sin(2 * np.pi * high * t)
        assert dominant_frequency(rest[40:-40], 8000) == pytest.approx(low, abs=3)
    with pytest.raises(ValueError):
        dtmf_tone("X", 100)


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_detector_every_digit_once_through_g711(codec: str) -> None:
    encode, decode = (ulaw_encode, ulaw_decode) if codec == "pcmu" else (alaw_encode, alaw_decode)
    signal = decode(encode(keyed(DIGITS + DIGITS[::-1])))
    assert "".join(run_detector(signal)) == DIGITS + DIGITS[::-1]


def test_detector_low_level_noise_odd_frames_and_repeats() -> None:
    rng = np.random.default_rng(1)
    signal = keyed("5559#", on_ms=60, off_ms=50).astype(np.float64) * 10 ** (-20 / 20)
    signal += rng.normal(0, 0.01 * 32768 * 10 ** (-20 / 20), len(signal))  # ~30 dB SNR
    digits = run_detector(np.rint(signal).astype(np.int16), frame=97)
    assert "".join(digits) == "5559#"


def test_detector_rejects_short_tones_single_tones_and_talk_off() -> None:
    assert run_detector(keyed("123", on_ms=20, off_ms=100)) == []
    t = np.arange(8000) / 8000
    for freq in (697, 1209, 1000):
        assert run_detector(np.rint(8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)) == []
    # three voices, 20 s each: no digit may be reported
    for seed in range(3):
        assert run_detector(speech_like(20.0, 8000, seed=seed)) == []


def test_detector_keeps_digit_through_one_disturbed_window() -> None:
    tone = dtmf_tone("8", 300)
    tone[1000:1040] = 0  # 5 ms dropout mid-tone
    assert run_detector(tone) == ["8"]
    with pytest.raises(ValueError):
        DtmfDetector(16000)
