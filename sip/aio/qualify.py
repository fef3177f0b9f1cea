"""OPTIONS qualify of a peer (the PBX): periodic pings and an up/down state callback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .useragent import UserAgent

log = logging.getLogger(__name__)

StateHandler = Callable[[bool], None]


class Qualifier:
    """Sends OPTIONS to `target` every `interval` seconds; `on_state(up)` runs on the
    first result and on every change. No final response within `timeout` counts as
    down, as do transport failures and 503; any other final response counts as up."""

    def __init__(
        self,
        ua: UserAgent,
        target: str,
        interval: float,
        on_state: StateHandler,
        timeout: float,
    ) -> None:
        self.ua = ua
        self.target = target
        self.interval = interval
        self.timeout = timeout
        self.on_state = on_state
        self.up: bool | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def ping(self) -> bool:
        """One OPTIONS round trip: is the peer up?"""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[bool] = loop.create_future()

        def done(reachable: bool) -> None:
            if not result.done():
                result.set_result(reachable)

        self.ua.ping(self.target, done)
        try:
            return await asyncio.wait_for(result, self.timeout)
        except TimeoutError:
            return False

    async def _run(self) -> None:
        while True:
            up = await self.ping()
            if up != self.up:
                self.up = up
                try:
                    self.on_state(up)
                except Exception:
                    log.exception("qualify state handler failed")
            await asyncio.sleep(self.interval)
