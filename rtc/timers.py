"""
The legs' deadline timers, and the time their callbacks run at.

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

So a ``DeadlineTimer`` hands its callback the time it fired at, never before
its deadline (uvloop's handles do not keep the exact deadline: ``when()`` is
rounded to the millisecond).
"""

import asyncio
from collections.abc import Callable

__all__ = ["DeadlineTimer"]


class DeadlineTimer:
    """A one-shot timer, re-armed by ``at``; ``callback(now)`` when it fires."""

    def __init__(self, callback: Callable[[float], None]) -> None:
        self.callback = callback
        self.when: float | None = None  # the deadline while armed
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def at(self, when: float) -> None:
        """Fire at ``when`` (instead of any earlier deadline)."""
        if self._handle is not None:
            self._handle.cancel()
        self.when = when
        self._handle = asyncio.get_running_loop().call_at(when, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.when = None

    def _fire(self) -> None:
        when = self.when
        assert when is not None
        self._handle = None
        self.when = None
        self.callback(max(asyncio.get_running_loop().time(), when))
