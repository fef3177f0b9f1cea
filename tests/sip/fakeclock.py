"""A fake clock that runs a transaction machine's timers without sleeping."""

from __future__ import annotations

from typing import Any

from sip import transaction as tx
from sip.timers import TimerName


class Harness:
    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.now = 0.0
        self.timers: dict[TimerName, float] = {}
        self.sent: list[tuple[float, bytes]] = []
        self.delivered: list[Any] = []
        self.timed_out = False
        self.terminated = False

    def apply(self, effects: list[tx.Effect]) -> list[tx.Effect]:
        for effect in effects:
            match effect:
                case tx.Send(data):
                    self.sent.append((round(self.now, 6), data))
                case tx.StartTimer(name, delay):
                    self.timers[name] = self.now + delay
                case tx.CancelTimer(name):
                    self.timers.pop(name, None)
                case tx.Deliver(message):
                    self.delivered.append(message)
                case tx.TimedOut():
                    self.timed_out = True
                case tx.Terminated():
                    self.terminated = True
        return effects

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing due timers in deadline order."""
        target = self.now + seconds
        while True:
            due = [(at, name) for name, at in self.timers.items() if at <= target + 1e-9]
            if not due:
                break
            at, name = min(due)
            del self.timers[name]
            self.now = at
            self.apply(self.machine.timer_fired(name))
        self.now = target

    @property
    def send_times(self) -> list[float]:
        return [at for at, _ in self.sent]
