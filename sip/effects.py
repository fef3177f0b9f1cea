"""Effects the sans-I/O user agent asks its runner to perform."""

from __future__ import annotations

from dataclasses import dataclass

from .peer import Peer

TimerKey = tuple[str, ...]


@dataclass(frozen=True)
class Transmit:
    peer: Peer
    data: bytes


@dataclass(frozen=True)
class StartTimer:
    """(Re)arm the timer `key`; an earlier timer with the same key is replaced."""

    key: TimerKey
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    key: TimerKey
