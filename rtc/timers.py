"""
The time a timer callback runs at, as the legs' sans-I/O cores must see it.

uvloop's ``loop.time()`` counts whole milliseconds, read once per loop
iteration, and its timers fire on that clock. A callback scheduled with
``call_at(when)`` for a ``when`` a fraction of a millisecond past a
millisecond can therefore find ``loop.time() < when``. A shell that passes
that reading to a core ("not due yet": the same deadline again) and re-arms
its timer for the same ``when`` is called back at once, again and again, until
the millisecond turns over: ~600 callbacks, a busy loop of up to a
millisecond per tick. With every call's legs sending filler or waiting on a
playout deadline, that was a whole core for 64 calls that carried no media.
asyncio's own loop reads a nanosecond clock and fires timers up to its clock
resolution early, so it re-arms once at most.
"""

import asyncio

__all__ = ["timer_time"]


def timer_time(loop: asyncio.AbstractEventLoop, when: float) -> float:
    """The time of a callback of the timer due at ``when``: never before it."""
    return max(loop.time(), when)
