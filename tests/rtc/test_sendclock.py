"""SendClock: timestamps and markers of frames sent as they are written, and filler."""

import pytest

from rtc.sendclock import FRAME, PAUSE, SLACK, SendClock

TICKS = 160


def test_frames_follow_on_whatever_their_jitter() -> None:
    clock = SendClock(TICKS, 1000)
    stamps = [clock.stamp(t) for t in (0.0, 0.021, 0.038, 0.065, 0.08, 0.0801)]
    assert [ts for ts, _ in stamps] == [1000 + k * TICKS for k in range(6)]
    # only the first packet starts a talk spurt
    assert [m for _, m in stamps] == [True] + [False] * 5


def test_after_a_pause_the_timestamp_is_back_in_step_with_the_clock() -> None:
    clock = SendClock(TICKS, 0)
    clock.stamp(0.0)
    clock.stamp(0.02)
    ts, marker = clock.stamp(0.5)  # hold, or a silent source
    assert marker
    assert ts == round(0.5 / FRAME) * TICKS
    assert clock.stamp(0.52) == (ts + TICKS, False)


def test_a_lagging_continuous_stream_jumps_only_past_the_slack() -> None:
    clock = SendClock(TICKS, 0)
    t, stamps = 0.0, []
    for _ in range(40):
        stamps.append(clock.stamp(t)[0])
        t += FRAME + 0.004  # a source clock 20 % slow, never a pause
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert set(steps) <= {TICKS, 2 * TICKS}
    assert 2 * TICKS in steps
    # never more than the slack behind
    assert t - FRAME - (stamps[-1] / TICKS) * FRAME <= SLACK + FRAME


def test_skip_leaves_room_for_frames_lost_upstream() -> None:
    clock = SendClock(TICKS, 0)
    clock.stamp(0.0)
    clock.skip(1)
    assert clock.stamp(0.04) == (2 * TICKS, False)
    assert clock.peek(0.06) == 3 * TICKS
    clock.skip(2)  # then a gap long enough to be a pause: still in step
    assert clock.stamp(0.10) == (5 * TICKS, True)


def test_marker_when_asked_and_codec_clock_change() -> None:
    clock = SendClock(TICKS, 0)
    clock.stamp(0.0)
    clock.marker = True  # e.g. audio resumes after RFC 4733 events
    assert clock.stamp(0.02) == (TICKS, True)
    clock.frame_ticks = 960  # re-INVITE to Opus
    assert clock.stamp(0.04) == (2 * TICKS, False)
    assert clock.stamp(0.06) == (2 * TICKS + 960, False)


def test_timestamp_at_follows_the_wall_clock() -> None:
    clock = SendClock(TICKS, 0)
    assert clock.timestamp_at(5.0) == 0
    clock.stamp(1.0)
    assert clock.timestamp_at(1.0 + FRAME) == TICKS
    assert clock.timestamp_at(2.0) == pytest.approx(50 * TICKS, abs=1)


def test_filler_after_a_pause_one_frame_per_period() -> None:
    clock = SendClock(TICKS, 0)
    # nothing written yet: filler at once
    assert clock.fill(0.0) == (True, pytest.approx(FRAME))
    clock.stamp(0.0, written=False)
    assert clock.fill(0.01) == (False, pytest.approx(FRAME))
    assert clock.fill(0.02)[0]
    clock.stamp(0.02, written=False)
    # frames written: no filler until they stop for a pause
    clock.stamp(0.03)
    fill, again = clock.fill(0.05)
    assert not fill and again == pytest.approx(0.03 + PAUSE)
    clock.stamp(0.05)
    assert clock.fill(0.0899) == (False, pytest.approx(0.05 + PAUSE))
    fill, again = clock.fill(0.11)
    assert fill and again == pytest.approx(0.13)
    ts, marker = clock.stamp(0.11, written=False)
    assert marker  # the first packet after 60 ms without any
    assert clock.fill(0.13)[0]
    assert clock.stamp(0.13, written=False) == (ts + TICKS, False)  # filler goes on
    # a written frame stops the filler again
    clock.stamp(0.145)
    assert not clock.fill(0.15)[0]


def test_filler_restarts_after_a_stall_instead_of_bursting() -> None:
    clock = SendClock(TICKS, 0)
    assert clock.fill(0.0)[0]
    clock.stamp(0.0, written=False)
    fill, again = clock.fill(1.0)  # the loop was suspended for a second
    assert fill and again == pytest.approx(1.0 + FRAME)
