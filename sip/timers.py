"""RFC 3261 timer values (Table 4) and the timer names used by the transaction machines.

Durations are plain data so the sans-I/O machines can ask for them and a test can
step a fake clock through them without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TimerName(StrEnum):
    A = "A"  # INVITE request retransmit (unreliable transports)
    B = "B"  # INVITE transaction timeout
    D = "D"  # wait time for response retransmits (INVITE client, Completed)
    E = "E"  # non-INVITE request retransmit (unreliable transports)
    F = "F"  # non-INVITE transaction timeout
    G = "G"  # INVITE final response retransmit (unreliable transports)
    H = "H"  # wait time for ACK receipt
    I = "I"  # wait time for ACK retransmits  # noqa: E741
    J = "J"  # wait time for non-INVITE request retransmits
    K = "K"  # wait time for non-INVITE response retransmits
    L = "L"  # RFC 6026: INVITE server Accepted -> Terminated
    M = "M"  # RFC 6026: INVITE client Accepted -> Terminated


@dataclass(frozen=True)
class TimerSettings:
    """T1 (RTT estimate), T2 (max non-INVITE retransmit interval), T4 (max network lifetime)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def initial(self, name: TimerName, reliable: bool) -> float:
        """The first duration of a timer, per RFC 3261 Table 4 and RFC 6026."""
        t1, t4 = self.t1, self.t4
        if name in (TimerName.A, TimerName.E, TimerName.G):
            return t1
        if name in (TimerName.B, TimerName.F, TimerName.H, TimerName.L, TimerName.M):
            return 64 * t1
        if name is TimerName.D:
            # RFC 3261 asks for "> 32 s" on unreliable transports regardless of T1.
            return 0.0 if reliable else max(32.0, 64 * t1)
        if name is TimerName.I or name is TimerName.K:
            return 0.0 if reliable else t4
        if name is TimerName.J:
            return 0.0 if reliable else 64 * t1
        raise ValueError(name)

    def backoff(self, name: TimerName, current: float) -> float:
        """The next retransmission interval: A doubles unbounded, E and G cap at T2."""
        if name is TimerName.A:
            return current * 2
        return min(current * 2, self.t2)

    @property
    def timeout(self) -> float:
        """64*T1: the overall transaction / 2xx-retransmission give-up time."""
        return 64 * self.t1


def glare_retry_delay(call_id_owner: bool, sample: int) -> float:
    """RFC 3261 §14.1: how long to wait before retrying a re-INVITE that got 491.

    The owner of the Call-ID (the one that generated it) waits 2.1-4 s, the other side
    0-2 s, both in units of 10 ms; `sample` is any non-negative random integer.
    """
    if call_id_owner:
        return (210 + sample % 191) / 100
    return (sample % 201) / 100
