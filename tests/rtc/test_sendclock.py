"""SendClock: timestamps and markers of frames sent as they are written, and filler."""

import pytest

from rtc.sendclock import FILL_AFTER, FRAME, MAX_LEAD, PAUSE, SLACK, SendClock

TICKS = 160


def stamp(clock: SendClock, now: float, written: bool = True) -> tuple[int, bool]:
    stamped = clock.stamp(now, written)
    assert stamped is not None
    return stamped


def test_frames_follow_on_whatever_their_jitter() -> None:
    clock = SendClock(TICKS, 1000)
    stamps = [stamp(clock, t) for t in (0.0, 0.021, 0.038, 0.065, 0.08, 0.0801)]
    assert [ts for ts, _ in stamps] == [1000 + k * TICKS for k in range(6)]
    # only the first packet starts a talk spurt
    assert [m for _, m in stamps] == [True] + [False] * 5


def test_a_burst_after_a_wait_follows_on_with_a_marker() -> None:
    # frames held 150 ms behind a late packet (the jitter buffer's wait), then released
    clock = SendClock(TICKS, 0)
    stamp(clock, 0.0)
    burst = [stamp(clock, 0.15) for _ in range(8)]
    assert [ts for ts, _ in burst] == [k * TICKS for k in range(1, 9)]
    assert [m for _, m in burst] == [True] + [False] * 7  # 150 ms without a packet


def test_after_a_pause_the_timestamp_is_back_in_step_with_the_clock() -> None:
    clock = SendClock(TICKS, 0)
    stamp(clock, 0.0)
    stamp(clock, 0.02)
    ts, marker = stamp(clock, 0.5)  # hold, or a silent source
    assert marker
    assert ts == round(0.5 / FRAME) * TICKS
    assert stamp(clock, 0.52) == (ts + TICKS, False)


def test_a_lagging_continuous_stream_jumps_only_past_the_slack() -> None:
    clock = SendClock(TICKS, 0)
    t, stamps = 0.0, []
    for _ in range(100):
        stamps.append(stamp(clock, t)[0])
        t += FRAME + 0.004  # a source clock 20 % slow, never a pause
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert set(steps) <= {TICKS, 2 * TICKS}
    assert 2 * TICKS in steps
    # never more than the slack behind
    assert t - FRAME - (stamps[-1] / TICKS) * FRAME <= SLACK + FRAME


def test_skip_leaves_room_for_frames_lost_upstream() -> None:
    clock = SendClock(TICKS, 0)
    stamp(clock, 0.0)
    clock.skip(1, 0.04)
    assert stamp(clock, 0.04) == (2 * TICKS, False)
    assert clock.peek(0.06) == 3 * TICKS
    clock.skip(2, 0.10)  # then a gap long enough for a marker
    assert stamp(clock, 0.10) == (5 * TICKS, True)
    clock.skip(3, 0.12)  # more than the time that passed: a frame, no further
    assert stamp(clock, 0.12) == (7 * TICKS, False)


def test_a_gap_after_filler_is_not_counted_twice() -> None:
    """
    The source paused longer than FILL_AFTER (an outage upstream: 20 packets
    lost, no marker when it resumes): the leg sent filler, which kept the
    timeline with the clock. The gap reported when the source resumes must not
    move the timeline on by those 20 frames again: every written frame after it
    would be beyond MAX_LEAD, dropped, and the far end would hear filler for
    the rest of the call.
    """
    clock = SendClock(TICKS, 0)
    t = 0.0
    for _ in range(50):
        stamp(clock, t)
        t += FRAME
    resume = t + 20 * FRAME
    while t < resume:
        fill, again = clock.fill(t)
        if fill:
            stamp(clock, t, written=False)
        t = max(again, t)
    clock.skip(20, t)
    sent = [clock.stamp(t + k * FRAME) for k in range(100)]
    assert clock.dropped == 0 and None not in sent
    # and the stream goes on in step with the clock
    assert abs(clock.peek(t + 100 * FRAME) - clock.timestamp_at(t + 100 * FRAME)) <= TICKS


def test_frames_written_while_too_far_ahead_stop_the_filler() -> None:
    """Dropped frames are still the source writing: no filler in between."""
    clock = SendClock(TICKS, 0)
    stamp(clock, 0.0)
    clock._position = 1.0  # however it came there, far ahead of the clock
    for k in range(20):
        assert clock.stamp(0.02 + k * FRAME) is None
        assert not clock.fill(0.02 + k * FRAME)[0]


def test_marker_when_asked_and_codec_clock_change() -> None:
    clock = SendClock(TICKS, 0)
    stamp(clock, 0.0)
    clock.marker = True  # e.g. audio resumes after RFC 4733 events
    assert stamp(clock, 0.02) == (TICKS, True)
    clock.frame_ticks = 960  # re-INVITE to Opus
    assert stamp(clock, 0.04) == (2 * TICKS, False)
    assert stamp(clock, 0.06) == (2 * TICKS + 960, False)


def test_timestamp_at_follows_the_wall_clock() -> None:
    clock = SendClock(TICKS, 0)
    assert clock.timestamp_at(5.0) == 0
    stamp(clock, 1.0)
    assert clock.timestamp_at(1.0 + FRAME) == TICKS
    assert clock.timestamp_at(2.0) == pytest.approx(50 * TICKS, abs=1)


def test_filler_once_the_source_stopped_one_frame_per_period() -> None:
    clock = SendClock(TICKS, 0)
    # nothing written yet: filler at once
    assert clock.fill(0.0) == (True, pytest.approx(FRAME))
    stamp(clock, 0.0, written=False)
    assert clock.fill(0.01) == (False, pytest.approx(FRAME))
    assert clock.fill(0.02)[0]
    stamp(clock, 0.02, written=False)
    # frames written: no filler, and the next look only when they could have stopped
    stamp(clock, 0.03)
    fill, again = clock.fill(0.05)
    assert not fill and again == pytest.approx(0.03 + FILL_AFTER)
    stamp(clock, 0.05)
    assert clock.fill(0.05 + FILL_AFTER - 0.001) == (False, pytest.approx(0.05 + FILL_AFTER))
    now = 0.05 + FILL_AFTER
    fill, again = clock.fill(now)
    assert fill and again == pytest.approx(now + FRAME)
    ts, marker = stamp(clock, now, written=False)
    assert marker  # the first packet after a pause
    assert ts == round(now / FRAME) * TICKS  # in step with the clock again
    assert clock.fill(now + FRAME)[0]
    assert stamp(clock, now + FRAME, written=False) == (ts + TICKS, False)  # filler goes on
    # a written frame in step stops the filler again
    assert stamp(clock, now + 2 * FRAME - 0.005) == (ts + 2 * TICKS, False)
    assert not clock.fill(now + 2 * FRAME)[0]


def test_frames_late_behind_filler_are_dropped_beyond_the_lead() -> None:
    clock = SendClock(TICKS, 0)
    for k in range(5):
        stamp(clock, k * FRAME)
    # the writer stalls for 400 ms: filler from 250 ms after its last frame on
    t = 4 * FRAME + FILL_AFTER
    while t < 0.48:
        assert clock.fill(t)[0]
        stamp(clock, t, written=False)
        t += FRAME
    slot = clock.peek(t)
    # then its 20 delayed frames arrive at once: the first ones take the next slots,
    # up to MAX_LEAD ahead of the clock; filler took the others' place
    now = t + 0.001
    burst = [clock.stamp(now) for _ in range(20)]
    sent = [b for b in burst if b is not None]
    assert [ts for ts, _ in sent] == [slot + k * TICKS for k in range(len(sent))]
    assert len(sent) == 1 + round(MAX_LEAD / FRAME)
    assert clock.dropped == 20 - len(sent)
    # in real time again, it goes on from there (no frame dropped), never further ahead
    for k in range(1, 10):
        assert clock.stamp(now + k * FRAME) is not None
    assert clock.dropped == 20 - len(sent)


def test_a_faster_source_clock_loses_a_frame_now_and_then() -> None:
    clock = SendClock(TICKS, 0)
    sent = [clock.stamp(k * 0.019) for k in range(200)]  # 5 % fast
    assert 0 < clock.dropped == sum(1 for s in sent if s is None) <= 12


def test_filler_restarts_after_a_stall_instead_of_bursting() -> None:
    clock = SendClock(TICKS, 0)
    assert clock.fill(0.0)[0]
    stamp(clock, 0.0, written=False)
    fill, again = clock.fill(1.0)  # the loop was suspended for a second
    assert fill and again == pytest.approx(1.0 + FRAME)


def test_constants_order() -> None:
    # a jitter buffer may hold frames up to 200 ms: no filler, no re-sync meanwhile
    assert PAUSE < 0.2 < FILL_AFTER < SLACK


def test_after_events_in_place_of_audio_the_audio_resumes_in_step() -> None:
    clock = SendClock(TICKS, 0)
    for k in range(5):
        stamp(clock, k * FRAME)
    start = clock.peek(0.1)  # an RFC 4733 event starts where the next audio would
    assert start == 5 * TICKS
    # 160 ms of event packets, no audio written meanwhile
    clock.resync()
    ts, marker = stamp(clock, 0.27)
    assert marker and ts >= start + int(0.16 * 8000)
    assert ts == int(0.27 / FRAME) * TICKS  # the slot of the clock, never ahead of it


def test_audio_after_an_event_never_overlaps_it() -> None:
    """resync(not_before): whatever the clock reading of the next frame (one taken
    before the event's end, e.g. a loop's clock read at the start of a busy
    iteration), the audio resumes no earlier than the event's timestamp + duration."""
    clock = SendClock(TICKS, 0)
    stamp(clock, 0.0)
    start = clock.peek(0.5)  # after a pause: in step with the clock
    clock.resync(start + 5 * TICKS)  # a 100 ms event
    ts, marker = stamp(clock, 0.56)  # only 60 ms on by this reading
    assert marker and ts == start + 5 * TICKS
    assert clock.peek(0.58) == ts + TICKS  # and it follows on from there
