"""Ending a call's media: every part is closed, whatever closing another raised."""

from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.core import Core
from rtc.rtpleg import RtpLeg


async def test_every_part_is_closed_in_order_whatever_one_raised() -> None:
    closed: list[str] = []

    class Part:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        async def close(self) -> None:
            closed.append(self.name)
            if self.fails:
                raise RuntimeError(f"{self.name} failed to close")

    class Local:
        def close(self) -> None:
            closed.append("local")

    rtp = await RtpLeg.open()  # a real leg: its sockets must be released
    call = SimpleNamespace(
        record=None,
        bridge=Part("bridge"),
        webrtc=Part("webrtc", fails=True),
        rtp=rtp,
        local=Local(),
    )
    with pytest.raises(RuntimeError, match="webrtc"):
        await Core._close_media(cast(Any, None), cast(Any, call))
    assert closed == ["bridge", "webrtc", "local"]
    assert rtp._closed and rtp._transport is not None and rtp._transport.is_closing()
