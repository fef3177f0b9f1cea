"""The adaptive jitter buffer under scripted loss, reordering, jitter and stream changes."""

import numpy as np
import numpy.typing as npt
import pytest

from rtc.jitterbuffer import JitterBuffer
from tests.audio import rms

N = 160


def frame(seq: int) -> npt.NDArray[np.int16]:
    """A frame that says which packet it was (seq modulo 3000)."""
    return np.full(N, 1000 + (seq % 3000) * 10, dtype=np.int16)


def ident(out: npt.NDArray[np.int16] | None) -> int | None:
    """The packet a played frame came from, None for silence/concealment."""
    if out is None or not np.all(out == out[0]) or int(out[0]) < 1000 or int(out[0]) % 10:
        return None
    return (int(out[0]) - 1000) // 10


def run(jb: JitterBuffer, arrivals: dict[int, list[int]], ticks: int, ssrc: int = 1) -> list:
    """arrivals: tick -> packets (seq) arriving just before that tick's playout."""
    played = []
    for tick in range(ticks):
        for seq in arrivals.get(tick, []):
            jb.put(ssrc, seq * N, frame(seq))
        played.append(ident(jb.get()))
    return played


def steady(count: int, start: int = 0) -> dict[int, list[int]]:
    return {t: [t - start] for t in range(start, start + count)}


def test_in_order_plays_everything_at_minimum_delay() -> None:
    jb = JitterBuffer()
    assert jb.get() is None  # nothing yet
    played = run(jb, steady(100), 100)
    assert played == list(range(100))
    assert jb.delay == pytest.approx(0.02)
    assert (jb.concealed, jb.late) == (0, 0)


def test_reordering_and_duplicates_within_the_target() -> None:
    jb = JitterBuffer(min_delay=0.06)
    arrivals: dict[int, list[int]] = {}
    for t in range(0, 60, 2):
        arrivals[t] = [t + 1, t, t]  # swapped pairs, each duplicated
    played = run(jb, arrivals, 62)
    real = [p for p in played if p is not None]
    assert real == list(range(60))
    assert jb.duplicates == 30
    assert jb.concealed == 0


def test_loss_is_concealed_by_fading_repeats() -> None:
    jb = JitterBuffer()
    arrivals = {t: [t] for t in range(40) if t not in (10, 20, 21, 22, 23, 24)}
    outputs = []
    for tick in range(40):
        for seq in arrivals.get(tick, []):
            jb.put(1, seq * N, frame(seq))
        outputs.append(jb.get())
    assert ident(outputs[9]) == 9
    assert outputs[10] is not None
    assert int(outputs[10][0]) == round(0.9 * (1000 + 90))  # repeat of 9, faded
    assert ident(outputs[11]) == 11
    # a long gap fades to silence
    assert [int(o[0]) for o in outputs[20:25] if o is not None] == [
        round(0.9 * 1190),
        round(0.6 * 1190),
        round(0.3 * 1190),
        0,
        0,
    ]
    assert ident(outputs[25]) == 25
    assert jb.concealed == 6


def test_bursty_arrival_grows_the_delay_then_plays_without_gaps() -> None:
    jb = JitterBuffer(max_delay=0.2)
    arrivals = steady(40)  # on time at first, then in 80 ms bursts
    for t in range(40, 300, 4):
        arrivals[t + 3] = [t, t + 1, t + 2, t + 3]
    played = run(jb, arrivals, 300)
    assert jb.late > 0
    assert 0.06 <= jb.delay <= 0.2
    tail = played[150:]
    # once adapted, the stream plays continuously
    real = [p for p in tail if p is not None]
    assert real == list(range(real[0], real[0] + len(real)))
    assert len(real) == len(tail)


def test_delay_is_capped_and_shrinks_back() -> None:
    jb = JitterBuffer(max_delay=0.1)
    arrivals = steady(20)
    for t in range(20, 200, 20):
        arrivals[t + 19] = list(range(t, t + 20))  # 400 ms bursts: hopeless
    run(jb, arrivals, 200)
    assert jb.delay == pytest.approx(0.1)
    steady_later = {t: [t - 200 + 1000] for t in range(200, 2000)}
    played = run(jb, steady_later, 2000)[200:]  # then steady
    assert None not in played[-1000:]
    assert jb.delay == pytest.approx(0.02)


def test_ssrc_change_and_timestamp_jump_reanchor() -> None:
    jb = JitterBuffer()
    run(jb, steady(20), 20)
    # a new source with unrelated timestamps plays at once
    played = []
    for seq in range(5000, 5010):
        jb.put(2, seq * N, frame(seq))
        played.append(ident(jb.get()))
    assert played == [seq % 3000 for seq in range(5000, 5010)]
    # a jump on the same source (no marker) too
    played = []
    for seq in range(90000, 90010):
        jb.put(2, seq * N, frame(seq))
        played.append(ident(jb.get()))
    assert played == [seq % 3000 for seq in range(90000, 90010)]


def test_marker_after_silence_resyncs_without_stretching() -> None:
    jb = JitterBuffer()
    run(jb, steady(10), 10)
    for _ in range(10):  # the sender goes quiet (DTX)
        jb.get()
    # the talk spurt resumes 5 frames further on the sender's clock
    played = []
    for k, seq in enumerate(range(25, 35)):
        jb.put(1, seq * N, frame(seq), marker=k == 0)
        played.append(ident(jb.get()))
    assert played == list(range(25, 35))


def test_comfort_noise_at_the_signalled_level() -> None:
    rng = np.random.default_rng(3)
    jb = JitterBuffer(noise=lambda n: rng.standard_normal(n))
    run(jb, steady(10), 10)
    jb.put_comfort_noise(1, 10 * N, bytes([40]))  # -40 dBov
    noise = np.concatenate([jb.get() for _ in range(50)])  # type: ignore[misc]
    assert 20 * np.log10(rms(noise)) == pytest.approx(-40, abs=1)
    # speech resumes in step
    played = []
    for seq in range(60, 70):
        jb.put(1, seq * N, frame(seq), marker=seq == 60)
        played.append(ident(jb.get()))
    assert played == list(range(60, 70))


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(min_delay=0.1, max_delay=0.05)
