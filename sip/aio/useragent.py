"""The asyncio user agent: runs the sans-I/O core's effects on a loop and a transport.

`UserAgent`, `OutboundInvite` and `InboundInvite` are the facade the gateway uses
(see contracts.md). Effects are performed strictly in order; calls made from inside
an event handler queue their effects behind the ones being performed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..core import (
    CoreConfig,
    Effect,
    InviteReceived,
    SessionForgotten,
    SessionUpdate,
    UserAgentCore,
)
from ..effects import CancelTimer, StartTimer, TimerKey, Transmit
from ..events import Rejected, SessionEvent
from ..invite_session import IncomingCall
from ..peer import Peer
from ..timers import TimerSettings
from .transport import Transport

log = logging.getLogger(__name__)

EventHandler = Callable[[SessionEvent], None]


@dataclass(frozen=True)
class UAConfig:
    host: str = "127.0.0.1"  # bind address for UDP and TCP (same port); also in Via/Contact
    port: int = 5060  # 0 = pick a free port (UDP and TCP share it)
    user_agent: str = "webrtc-gateway"
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


class OutboundInvite:
    """UAC INVITE session."""

    def __init__(self, ua: UserAgent, session_id: str, on_event: EventHandler) -> None:
        self._ua = ua
        self._session_id = session_id
        self.call_id = session_id
        self._on_event = on_event

    def cancel(self) -> None:
        """CANCEL before a final response (once a provisional arrived); after 2xx: bye()."""
        self._ua._execute(self._ua._core.cancel(self._session_id))

    def bye(self) -> None:
        """BYE in a confirmed dialog; no-op when the session already ended."""
        self._ua._execute(self._ua._core.bye(self._session_id))

    def _deliver(self, event: SessionEvent) -> None:
        self._on_event(event)


class InboundInvite:
    """UAS INVITE session; the UA has already sent 100 Trying."""

    def __init__(self, ua: UserAgent, call: IncomingCall) -> None:
        self._ua = ua
        self._session_id = call.session_id
        self.call_id = call.call_id
        self.request_user = call.request_user
        self.caller_user = call.caller_user
        self.caller_display = call.caller_display
        self.sdp = call.sdp
        self.source: tuple[str, int] = call.source.address
        self.transport = call.source.transport
        self._handler: EventHandler | None = None
        self._buffered: list[SessionEvent] = []

    def set_event_handler(self, fn: EventHandler) -> None:
        self._handler = fn
        buffered, self._buffered = self._buffered, []
        for event in buffered:
            self._ua._call_handler(fn, event)

    def ringing(self, sdp: bytes | None = None) -> None:
        """180 Ringing, or 183 Session Progress when `sdp` is given."""
        self._ua._execute(self._ua._core.ringing(self._session_id, sdp))

    def answer(self, sdp: bytes) -> None:
        """200 OK, retransmitted until ACK (Confirmed) or 64*T1 (Terminated("timeout"))."""
        self._ua._execute(self._ua._core.answer(self._session_id, sdp))

    def reject(self, code: int, reason: str = "") -> None:
        self._ua._execute(self._ua._core.reject(self._session_id, code, reason))

    def bye(self) -> None:
        self._ua._execute(self._ua._core.bye(self._session_id))

    def _deliver(self, event: SessionEvent) -> None:
        if self._handler is None:
            self._buffered.append(event)
        else:
            self._handler(event)


class UserAgent:
    def __init__(self, config: UAConfig, on_invite: Callable[[InboundInvite], None]) -> None:
        self.config = config
        self.on_invite = on_invite
        self._transport = Transport(
            config.host, config.port, self._on_message, self._on_transport_error
        )
        self._core_instance: UserAgentCore | None = None
        self._timers: dict[TimerKey, asyncio.TimerHandle] = {}
        self._sessions: dict[str, OutboundInvite | InboundInvite] = {}
        self._queue: deque[Effect] = deque()
        self._running = False

    async def start(self) -> None:
        """Bind UDP and TCP on the configured address and port."""
        await self._transport.start()
        c = self.config
        self._core_instance = UserAgentCore(
            CoreConfig(
                host=c.host,
                port=self._transport.port,
                user_agent=c.user_agent,
                timers=TimerSettings(c.t1, c.t2, c.t4),
            ),
            secrets.token_hex,
        )

    @property
    def port(self) -> int:
        return self._transport.port

    @property
    def _core(self) -> UserAgentCore:
        if self._core_instance is None:
            raise RuntimeError("UserAgent.start() has not been awaited")
        return self._core_instance

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._queue.clear()
        await self._transport.close()

    def invite(
        self,
        target: str,
        *,
        from_user: str,
        from_display: str = "",
        sdp: bytes | None,
        credentials: tuple[str, str] | None = None,
        on_event: EventHandler,
    ) -> OutboundInvite:
        """Send an INVITE to `target` ("sip:user@host:port[;transport=tcp]").

        An unusable target is reported as Rejected(416) from the loop, not raised.
        """
        try:
            session_id, effects = self._core.invite(
                target,
                from_user=from_user,
                from_display=from_display,
                sdp=sdp,
                credentials=credentials,
            )
        except ValueError:
            log.warning("cannot call %r: bad target URI", target)
            failed = OutboundInvite(self, "", on_event)
            rejected = Rejected(416, "Unsupported URI Scheme")
            asyncio.get_running_loop().call_soon(self._call_handler, on_event, rejected)
            return failed
        outbound = OutboundInvite(self, session_id, on_event)
        self._sessions[session_id] = outbound
        self._execute(effects)
        return outbound

    # -- effect runner -----------------------------------------------------------------

    def _execute(self, effects: list[Effect]) -> None:
        self._queue.extend(effects)
        if self._running:
            return
        self._running = True
        try:
            while self._queue:
                self._perform(self._queue.popleft())
        finally:
            self._running = False

    def _perform(self, effect: Effect) -> None:
        match effect:
            case Transmit(peer, data):
                self._transport.send(peer, data)
            case StartTimer(key, delay):
                old = self._timers.pop(key, None)
                if old is not None:
                    old.cancel()
                loop = asyncio.get_running_loop()
                self._timers[key] = loop.call_later(delay, self._on_timer, key)
            case CancelTimer(key):
                handle = self._timers.pop(key, None)
                if handle is not None:
                    handle.cancel()
            case SessionUpdate(session_id, event):
                session = self._sessions.get(session_id)
                if session is not None:
                    self._call_handler(session._deliver, event)
            case SessionForgotten(session_id):
                self._sessions.pop(session_id, None)
            case InviteReceived(call):
                inbound = InboundInvite(self, call)
                self._sessions[call.session_id] = inbound
                try:
                    self.on_invite(inbound)
                except Exception:
                    log.exception("on_invite failed; rejecting the call")
                    self._queue.extend(self._core.reject(call.session_id, 500))

    @staticmethod
    def _call_handler(fn: EventHandler, event: SessionEvent) -> None:
        try:
            fn(event)
        except Exception:
            log.exception("session event handler failed on %r", event)

    def _on_timer(self, key: TimerKey) -> None:
        self._timers.pop(key, None)
        self._execute(self._core.timer_fired(key))

    def _on_message(self, data: bytes, peer: Peer) -> None:
        self._execute(self._core.receive(data, peer))

    def _on_transport_error(self, peer: Peer) -> None:
        self._execute(self._core.transport_error(peer))
