import asyncio

import numpy as np
import pytest

from rtc.ports import FrameQueue, PlayoutQueue, PortClosed, frame_samples


def frame(value: int) -> np.ndarray:
    return np.full(4, value, dtype=np.int16)


def test_frame_samples() -> None:
    assert frame_samples(8000) == 160
    assert frame_samples(48000) == 960


async def test_frame_queue_drops_oldest_when_full() -> None:
    queue = FrameQueue(3)
    for value in range(5):
        queue.put(frame(value))
    assert len(queue) == 3
    assert [int((await queue.get())[0]) for _ in range(3)] == [2, 3, 4]


async def test_frame_queue_wakes_every_reader_and_close_ends_them() -> None:
    queue = FrameQueue(10)
    readers = [asyncio.ensure_future(queue.get()) for _ in range(2)]
    await asyncio.sleep(0)
    queue.put(frame(1))
    queue.put(frame(2))
    assert sorted(int(f[0]) for f in await asyncio.gather(*readers)) == [1, 2]

    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.close()
    with pytest.raises(PortClosed):
        await waiting
    queue.put(frame(3))  # ignored once closed
    with pytest.raises(PortClosed):
        await queue.get()


async def test_frame_queue_cancelled_reader_leaves_no_waiter() -> None:
    queue = FrameQueue(10)
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    reader.cancel()
    await asyncio.sleep(0)
    queue.put(frame(7))
    assert int((await queue.get())[0]) == 7


def test_playout_queue_returns_none_when_empty() -> None:
    queue = PlayoutQueue()
    assert queue.pop() is None
    queue.put(frame(1))
    popped = queue.pop()
    assert popped is not None and popped[0] == 1


def test_playout_queue_trims_a_standing_backlog() -> None:
    queue = PlayoutQueue(maxlen=8, target=2, window=50)
    for value in range(6):
        queue.put(frame(value))
    # the producer keeps pace with the consumer: the backlog of 6 would stay
    # forever, so it is trimmed one frame per window until the sender finds
    # just the target depth waiting (target - 1 left after its pop)
    depths = []
    for value in range(6, 400):
        queue.put(frame(value))
        queue.pop()
        depths.append(len(queue))
    assert depths[0] == 6
    assert depths[-1] == 1


def test_playout_queue_keeps_a_jittery_but_short_queue() -> None:
    queue = PlayoutQueue(maxlen=8, target=2, window=50)
    popped = 0
    for n in range(500):
        # bursts of two frames every other tick
        if n % 2 == 0:
            queue.put(frame(n))
            queue.put(frame(n + 1))
        if queue.pop() is not None:
            popped += 1
    assert popped == 500


async def test_frame_queue_skips_frames_nobody_read_in_time() -> None:
    queue = FrameQueue(50, max_age=0.05)
    for value in range(5):
        queue.put(frame(value))
    await asyncio.sleep(0.08)
    queue.put(frame(99))
    assert int((await queue.get())[0]) == 99
    assert len(queue) == 0
