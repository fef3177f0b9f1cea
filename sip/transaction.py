"""The four RFC 3261 §17 transaction state machines, with RFC 6026's Accepted state.

Each machine takes messages and timer expiries in and returns effects out; it never
touches a socket or a clock. Timers are named after the RFC and carry their duration,
so whoever runs the effects schedules them and calls `timer_fired(name)` later.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sipmessage import CSeq, Request, Response

from .messages import MAX_FORWARDS, encode
from .timers import TimerName, TimerSettings


class State(StrEnum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTimer:
    name: TimerName
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    name: TimerName


@dataclass(frozen=True, eq=False)
class Deliver:
    """A message for the transaction user (a response, or an ACK in Accepted)."""

    message: Request | Response


@dataclass(frozen=True)
class TimedOut:
    """Timer B/F (client) or H (server) fired: the TU must treat it as a 408/failure."""


@dataclass(frozen=True)
class TransportFailed:
    """The transport reported an error sending a message of this transaction."""


@dataclass(frozen=True)
class Terminated:
    """The transaction is over; its owner should forget it."""


Effect = Send | StartTimer | CancelTimer | Deliver | TimedOut | TransportFailed | Terminated


class _Transaction:
    state: State

    def __init__(self, settings: TimerSettings, reliable: bool) -> None:
        self.settings = settings
        self.reliable = reliable
        self._intervals: dict[TimerName, float] = {}

    def _start(self, name: TimerName, delay: float | None = None) -> StartTimer:
        if delay is None:
            delay = self.settings.initial(name, self.reliable)
        self._intervals[name] = delay
        return StartTimer(name, delay)

    def _backoff(self, name: TimerName, cap_at_t2: bool = True) -> StartTimer:
        current = self._intervals.get(name, self.settings.t1)
        nxt = self.settings.backoff(name, current)
        if not cap_at_t2:
            nxt = current * 2
        return self._start(name, nxt)

    def _terminate(self, *extra: Effect) -> list[Effect]:
        self.state = State.TERMINATED
        effects: list[Effect] = list(extra)
        effects.extend(CancelTimer(name) for name in self._intervals)
        self._intervals.clear()
        effects.append(Terminated())
        return effects

    def _stop(self, *names: TimerName) -> list[Effect]:
        effects: list[Effect] = []
        for name in names:
            if self._intervals.pop(name, None) is not None:
                effects.append(CancelTimer(name))
        return effects

    def transport_error(self) -> list[Effect]:
        if self.state is State.TERMINATED:
            return []
        return self._terminate(TransportFailed())


class InviteClientTransaction(_Transaction):
    """RFC 3261 §17.1.1 (Figure 5) as updated by RFC 6026 §7.2."""

    def __init__(self, request: Request, settings: TimerSettings, reliable: bool) -> None:
        super().__init__(settings, reliable)
        self.request = request
        self.data = encode(request)
        self.state = State.CALLING
        self._ack: bytes | None = None

    def start(self) -> list[Effect]:
        effects: list[Effect] = [Send(self.data)]
        if not self.reliable:
            effects.append(self._start(TimerName.A))
        effects.append(self._start(TimerName.B))
        return effects

    def receive(self, response: Response) -> list[Effect]:
        code = response.code
        state = self.state
        if state in (State.CALLING, State.PROCEEDING):
            if code < 200:
                self.state = State.PROCEEDING
                # Timer B only bounds the Calling state; once a provisional arrived the
                # TU decides how long to wait (RFC 3261 §17.1.1.2).
                return [*self._stop(TimerName.A, TimerName.B), Deliver(response)]
            if code < 300:
                self.state = State.ACCEPTED
                return [
                    *self._stop(TimerName.A, TimerName.B),
                    Deliver(response),
                    self._start(TimerName.M),
                ]
            self.state = State.COMPLETED
            self._ack = encode(self.build_ack(response))
            effects: list[Effect] = [*self._stop(TimerName.A, TimerName.B), Send(self._ack)]
            effects.append(Deliver(response))
            delay = self.settings.initial(TimerName.D, self.reliable)
            if delay == 0:
                return [*effects, *self._terminate()]
            effects.append(self._start(TimerName.D, delay))
            return effects
        if state is State.ACCEPTED and 200 <= code < 300:
            # RFC 6026: retransmitted (or forked) 2xx go to the TU, which re-sends its ACK.
            return [Deliver(response)]
        if state is State.COMPLETED and code >= 300 and self._ack is not None:
            return [Send(self._ack)]
        return []

    def timer_fired(self, name: TimerName) -> list[Effect]:
        if name not in self._intervals:
            return []
        if name is TimerName.A and self.state is State.CALLING:
            return [Send(self.data), self._backoff(TimerName.A, cap_at_t2=False)]
        if name is TimerName.B and self.state is State.CALLING:
            self._intervals.pop(name)
            return self._terminate(TimedOut())
        if name is TimerName.D and self.state is State.COMPLETED:
            self._intervals.pop(name)
            return self._terminate()
        if name is TimerName.M and self.state is State.ACCEPTED:
            self._intervals.pop(name)
            return self._terminate()
        return []

    def build_ack(self, response: Response) -> Request:
        """ACK for a non-2xx final response (RFC 3261 §17.1.1.3): same branch, To from it."""
        request = self.request
        ack = Request("ACK", request.uri)
        headers = ack.headers
        headers.set("Via", request.headers.getlist("Via")[0])
        headers.set("Max-Forwards", str(MAX_FORWARDS))
        headers.set("From", request.headers["From"])
        headers.set("To", response.headers["To"])
        headers.set("Call-ID", request.call_id)
        ack.cseq = CSeq(request.cseq.sequence, "ACK")
        routes = request.headers.getlist("Route")
        if routes:
            headers.setlist("Route", list(routes))
        return ack


class NonInviteClientTransaction(_Transaction):
    """RFC 3261 §17.1.2 (Figure 6)."""

    def __init__(self, request: Request, settings: TimerSettings, reliable: bool) -> None:
        super().__init__(settings, reliable)
        self.request = request
        self.data = encode(request)
        self.state = State.TRYING

    def start(self) -> list[Effect]:
        effects: list[Effect] = [Send(self.data)]
        if not self.reliable:
            effects.append(self._start(TimerName.E))
        effects.append(self._start(TimerName.F))
        return effects

    def receive(self, response: Response) -> list[Effect]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        if response.code < 200:
            self.state = State.PROCEEDING
            return [Deliver(response)]
        self.state = State.COMPLETED
        effects: list[Effect] = [*self._stop(TimerName.E, TimerName.F), Deliver(response)]
        delay = self.settings.initial(TimerName.K, self.reliable)
        if delay == 0:
            return [*effects, *self._terminate()]
        effects.append(self._start(TimerName.K, delay))
        return effects

    def timer_fired(self, name: TimerName) -> list[Effect]:
        if name not in self._intervals:
            return []
        if name is TimerName.E and self.state is State.TRYING:
            return [Send(self.data), self._backoff(TimerName.E)]
        if name is TimerName.E and self.state is State.PROCEEDING:
            return [Send(self.data), self._start(TimerName.E, self.settings.t2)]
        if name is TimerName.F and self.state in (State.TRYING, State.PROCEEDING):
            self._intervals.pop(name)
            return self._terminate(TimedOut())
        if name is TimerName.K and self.state is State.COMPLETED:
            self._intervals.pop(name)
            return self._terminate()
        return []


class InviteServerTransaction(_Transaction):
    """RFC 3261 §17.2.1 (Figure 7) as updated by RFC 6026 §7.1.

    2xx responses move it to Accepted; their retransmission until ACK is the TU's job
    (RFC 3261 §13.3.1.4), and ACKs reaching Accepted are delivered to the TU.
    """

    def __init__(self, request: Request, settings: TimerSettings, reliable: bool) -> None:
        super().__init__(settings, reliable)
        self.request = request
        self.state = State.PROCEEDING
        self._last: bytes | None = None

    def receive(self, request: Request) -> list[Effect]:
        method = request.method
        if method == "INVITE":
            if self.state in (State.PROCEEDING, State.COMPLETED) and self._last is not None:
                return [Send(self._last)]
            return []
        if method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                effects: list[Effect] = self._stop(TimerName.G, TimerName.H)
                delay = self.settings.initial(TimerName.I, self.reliable)
                if delay == 0:
                    return [*effects, *self._terminate()]
                effects.append(self._start(TimerName.I, delay))
                return effects
            if self.state is State.ACCEPTED:
                return [Deliver(request)]
        return []

    def respond(self, response: Response) -> list[Effect]:
        code = response.code
        if self.state is State.PROCEEDING:
            data = encode(response)
            if code < 200:
                self._last = data
                return [Send(data)]
            if code < 300:
                self.state = State.ACCEPTED
                self._last = None
                return [Send(data), self._start(TimerName.L)]
            self.state = State.COMPLETED
            self._last = data
            effects: list[Effect] = [Send(data)]
            if not self.reliable:
                effects.append(self._start(TimerName.G))
            effects.append(self._start(TimerName.H))
            return effects
        if self.state is State.ACCEPTED and 200 <= code < 300:
            # The TU's own 2xx retransmissions pass straight through.
            return [Send(encode(response))]
        return []

    def timer_fired(self, name: TimerName) -> list[Effect]:
        if name not in self._intervals:
            return []
        if name is TimerName.G and self.state is State.COMPLETED and self._last is not None:
            return [Send(self._last), self._backoff(TimerName.G)]
        if name is TimerName.H and self.state is State.COMPLETED:
            self._intervals.pop(name)
            return self._terminate(TimedOut())
        if name is TimerName.I and self.state is State.CONFIRMED:
            self._intervals.pop(name)
            return self._terminate()
        if name is TimerName.L and self.state is State.ACCEPTED:
            self._intervals.pop(name)
            return self._terminate()
        return []


class NonInviteServerTransaction(_Transaction):
    """RFC 3261 §17.2.2 (Figure 8)."""

    def __init__(self, request: Request, settings: TimerSettings, reliable: bool) -> None:
        super().__init__(settings, reliable)
        self.request = request
        self.state = State.TRYING
        self._last: bytes | None = None

    def receive(self, request: Request) -> list[Effect]:
        if self.state in (State.PROCEEDING, State.COMPLETED) and self._last is not None:
            return [Send(self._last)]
        return []

    def respond(self, response: Response) -> list[Effect]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        data = encode(response)
        self._last = data
        if response.code < 200:
            self.state = State.PROCEEDING
            return [Send(data)]
        self.state = State.COMPLETED
        delay = self.settings.initial(TimerName.J, self.reliable)
        if delay == 0:
            return [Send(data), *self._terminate()]
        return [Send(data), self._start(TimerName.J, delay)]

    def timer_fired(self, name: TimerName) -> list[Effect]:
        if name is TimerName.J and self.state is State.COMPLETED and name in self._intervals:
            self._intervals.pop(name)
            return self._terminate()
        return []


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
