"""RFC 4733 telephone-event packets, digit schedules and in-band DTMF detection."""

import numpy as np
import numpy.typing as npt
import pytest

from rtc.dtmf import (
    DIGITS,
    MAX_DURATION,
    DtmfEventReceiver,
    EventPacket,
    TelephoneEvent,
    digit_to_event,
    event_schedule,
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


def event_packets(
    digit: str, duration: int, update_interval: int, end_interval: int
) -> list[tuple[int, TelephoneEvent]]:
    """A schedule as (offset, event) pairs: what a digit shorter than 0xFFFF sends."""
    return [
        (packet.offset, packet.event)
        for packet in event_schedule(digit, duration, update_interval, end_interval)
    ]


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


def test_schedule_segments_events_longer_than_the_duration_field() -> None:
    """
    RFC 4733 2.5.1.3: 2 s at 48 kHz (96000 samples) is past 0xFFFF: the first
    segment reports 0xFFFF without E, the second is timestamped 0xFFFF later
    and counts from there, and only it ends; together they last the 2 s.
    """
    schedule = event_schedule("5", 96000, update_interval=2400, end_interval=960)
    offsets = [p.offset for p in schedule]
    assert offsets == sorted(offsets)
    assert [p.marker for p in schedule] == [True] + [False] * (len(schedule) - 1)
    first = [p for p in schedule if p.timestamp == 0]
    second = [p for p in schedule if p.timestamp == MAX_DURATION]
    assert len(first) + len(second) == len(schedule)
    assert first[-1] == EventPacket(
        MAX_DURATION, 0, TelephoneEvent(5, False, 10, MAX_DURATION), False
    )
    assert not any(p.event.end for p in first)
    assert [p.event.duration for p in first[:2]] == [2400, 4800]
    # the next update (at 67200 samples) reports the new segment's own duration
    assert second[0] == EventPacket(67200, MAX_DURATION, TelephoneEvent(5, False, 10, 1665), False)
    assert second[-3:] == [
        EventPacket(96000 + i * 960, MAX_DURATION, TelephoneEvent(5, True, 10, 30465), False)
        for i in range(3)
    ]
    assert sum(p.event.end for p in schedule) == 3
    # 5 s (RtpLeg's longest): four segments, 0xFFFF apart
    five = event_schedule("5", 240000, 2400, 960)
    assert sorted({p.timestamp for p in five}) == [0, 65535, 131070, 196605]
    assert five[-1].event == TelephoneEvent(5, True, 10, 240000 - 196605)
    # exactly 0xFFFF is still one segment, ended by its 0xFFFF reports
    exact = event_schedule("5", MAX_DURATION, 2400, 960)
    assert {p.timestamp for p in exact} == {0}
    assert exact[-1].event == TelephoneEvent(5, True, 10, MAX_DURATION)
    # up to 0xFFFF: one timestamp
    short = event_schedule("7", 800, 400, 160)
    assert {p.timestamp for p in short} == {0}


def libwebrtc_press(
    receiver: DtmfEventReceiver,
    start: int,
    length: int,
    interval: int = 2400,
    lost: frozenset[int] = frozenset(),
) -> list[str]:
    """
    A key press as libwebrtc's rtp_sender_audio.cc sends it: a report every
    ``interval``; past 0xFFFF one report of 0xFFFF on the old segment (with
    the E bit if the press ends in that packet), then the new segment starts
    at this packet's timestamp; end reports three times. ``lost``: numbers
    of packets that never arrive.
    """
    digits: list[str] = []
    sent = 0

    def send(timestamp: int, event: TelephoneEvent) -> None:
        nonlocal sent
        if sent not in lost and (digit := receiver.feed(7, timestamp & 0xFFFFFFFF, bytes(event))):
            digits.append(digit)
        sent += 1

    segment, now = start, start
    while True:
        now += interval
        duration = now - segment
        ended = length <= now - start
        if duration > MAX_DURATION:
            send(segment, TelephoneEvent(5, ended, 10, MAX_DURATION))
            segment, duration = now, duration - MAX_DURATION
        for _ in range(3 if ended else 1):
            send(segment, TelephoneEvent(5, ended, 10, duration))
        if ended:
            return digits


@pytest.mark.parametrize(
    ("length", "interval", "lost"),
    [
        (96000, 2400, frozenset()),  # 2 s at 48 kHz, updates every 50 ms
        (96000, 960, frozenset()),  # every 20 ms, as the browser's proof script
        (288000, 2400, frozenset()),  # 6 s (RTCDTMFSender's longest): 5 segments
        (96000, 2400, frozenset({27})),  # the 0xFFFF report lost
        (96000, 2400, frozenset({26, 27})),  # and the report before it
        (65535 + 1000, 2400, frozenset()),  # ends in the packet that crosses 0xFFFF
        (96000, 2400, frozenset(range(28))),  # the first segment lost altogether
    ],
)
def test_receiver_one_digit_for_a_long_press_in_segments(
    length: int, interval: int, lost: frozenset[int]
) -> None:
    """RFC 4733 2.5.2.3: a segment continuing a long press is not a second digit."""
    receiver = DtmfEventReceiver()
    assert libwebrtc_press(receiver, 0xFFFF0000, length, interval, lost) == ["5"]  # wraps
    # the next press of the same key, after a pause, is a digit again
    assert libwebrtc_press(receiver, 0xFFFF0000 + length + 4800, 4800, interval) == ["5"]


def test_receiver_one_digit_per_segmented_schedule() -> None:
    receiver = DtmfEventReceiver()
    digits = []
    for start, digit, duration in (
        (1000, "5", 96000),
        (100_000, "5", 4800),
        (200_000, "5", 240000),
    ):
        for packet in event_schedule(digit, duration, 2400, 960):
            digits.append(receiver.feed(3, start + packet.timestamp, bytes(packet.event)))
    assert [d for d in digits if d] == ["5", "5", "5"]


def test_receiver_segments_and_new_presses_told_apart() -> None:
    receiver = DtmfEventReceiver()
    report = bytes(TelephoneEvent(5, False, 10, MAX_DURATION))
    assert receiver.feed(1, 0, report) == "5"
    # another key at the next segment's timestamp is a new digit
    assert receiver.feed(1, MAX_DURATION, bytes(TelephoneEvent(6, False, 10, 960))) == "6"
    # a press that ended short of 0xFFFF has no next segment
    assert receiver.feed(1, 500_000, bytes(TelephoneEvent(5, True, 10, 4800))) == "5"
    assert receiver.feed(1, 500_000 + MAX_DURATION, bytes(TelephoneEvent(5, False, 10, 960))) == "5"
    # segments continue one SSRC's press, not another's
    assert receiver.feed(2, MAX_DURATION, bytes(TelephoneEvent(5, False, 10, 960))) == "5"
    # a new segment too far from 0xFFFF after the last is a new press
    assert receiver.feed(1, 700_000, report) == "5"
    assert receiver.feed(1, 700_000 + MAX_DURATION + 20000, report) == "5"


def test_digits_across_timestamp_jumps_are_each_reported_once() -> None:
    """Digits between timestamp jumps on one SSRC (a PBX re-bridging the call), back
    and forward, one landing on an earlier press's timestamp with another digit:
    each reported once; the end packets repeated after a jump are not a new press."""
    receiver = DtmfEventReceiver()
    digits: list[str | None] = []

    def press(code: int, timestamp: int) -> None:
        for duration in (160, 320, 480, 640):
            digits.append(
                receiver.feed(0x4242, timestamp, bytes(TelephoneEvent(code, False, 10, duration)))
            )
        for _ in range(3):  # the end, sent three times
            digits.append(
                receiver.feed(0x4242, timestamp, bytes(TelephoneEvent(code, True, 10, 800)))
            )

    press(1, 1_000_000)
    press(2, 1_000_000 + 8000)
    press(3, 1_000_000 + 8000 - 5 * 8000)  # jumped back 5 s
    digits.append(receiver.feed(0x4242, 1_000_000 + 8000, bytes(TelephoneEvent(2, True, 10, 800))))
    press(4, 1_000_000)  # back onto the first press's timestamp, another digit
    press(5, 1_000_000 + 40 * 8000)  # forward
    press(5, 1_000_000 + 40 * 8000 + 1600)
    assert [d for d in digits if d is not None] == ["1", "2", "3", "4", "5", "5"]


def test_receiver_digits_sharing_a_timestamp() -> None:
    """A peer that does not advance the timestamp between digits still sends two."""
    receiver = DtmfEventReceiver()
    digits = [
        receiver.feed(1, 5000, bytes(TelephoneEvent(event, end, 10, 800)))
        for event in (1, 2)
        for end in (False, True, True, True)
    ]
    assert [d for d in digits if d] == ["1", "2"]
    # late packets of either are still ignored
    assert receiver.feed(1, 5000, bytes(TelephoneEvent(1, True, 10, 800))) is None
    assert receiver.feed(1, 5000, bytes(TelephoneEvent(2, True, 10, 800))) is None


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
