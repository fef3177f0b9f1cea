"""The asyncio user agent: runs the sans-I/O core's effects on a loop and a transport.

`UserAgent`, `OutboundInvite` and `InboundInvite` are the facade the gateway uses
(see contracts.md). Effects are performed strictly in order; calls made from inside
an event handler queue their effects behind the ones being performed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sipmessage import URI

from ..access import AccessPolicy, RateLimiter
from ..auth_server import ALGORITHMS, CredentialLookup, DigestServer
from ..core import (
    CoreConfig,
    Effect,
    InviteReceived,
    MessageDone,
    OfferReceived,
    OfferWanted,
    OptionsResult,
    ReferProgress,
    ReinviteDone,
    SessionForgotten,
    SessionUpdate,
    UserAgentCore,
)
from ..effects import CancelTimer, StartTimer, TimerKey, Transmit
from ..events import Rejected, SessionEvent
from ..invite_session import IncomingCall
from ..locate import Resolver, locate
from ..peer import Peer
from ..refer import replaces_value
from ..registrar import Registrar
from ..registration import RegistrationState, RegistrationUpdate
from ..timers import TimerSettings
from ..ua_effects import ResolveTargets
from .dns import StdlibResolver
from .qualify import Qualifier, StateHandler
from .transport import Transport, WebSocketConnection, WebSocketSend

log = logging.getLogger(__name__)

EventHandler = Callable[[SessionEvent], None]
ReinviteResult = Callable[[int, bytes | None], None]
ReferHandler = Callable[[int], None]
MessageResult = Callable[[int], None]
# (offer) -> answer; (None) -> our offer for a re-INVITE without SDP.
ReofferHandler = Callable[[bytes | None], bytes | None]
RegistrationHandler = Callable[[RegistrationUpdate], None]
UNREGISTER_WAIT = 2.0  # close(): how long to wait for the unregistrations to be answered


@dataclass(frozen=True)
class UAConfig:
    host: str = "127.0.0.1"  # bind address for UDP and TCP (same port); also in Via/Contact
    port: int = 5060  # 0 = pick a free port (UDP and TCP share it)
    user_agent: str = "webrtc-gateway"
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    # Digest as UAS (used when UserAgent(authenticator=...) is given).
    realm: str = ""  # "" = the host
    digest_algorithms: tuple[str, ...] = ALGORITHMS  # challenge order, preferred first
    nonce_ttl: float = 300.0  # seconds; older nonces get stale=true
    # Built-in registrar: serve REGISTER (digest-checked when an authenticator is given).
    registrar: bool = False
    min_expires: int = 60  # shorter registrations get 423 Interval Too Brief
    max_expires: int = 3600
    # Access policy for INVITEs: None = accept from anyone (no policy); otherwise only
    # these networks ("10.0.0.0/8", "192.0.2.7") unchallenged, anyone else must pass
    # digest with the authenticator or gets 403.
    trusted_networks: tuple[str, ...] | None = None
    # INVITE/REGISTER per source address: sustained rate per second and burst (0 = off).
    request_rate: float = 0.0
    request_burst: int = 20
    # CRLF keep-alive pings on TCP connections every this many seconds (0 = off);
    # pings from peers are always answered.
    keepalive_interval: float = 0.0
    # TLS (SIPS): listen on tls_port (None = no TLS listener, 0 = any free port) with
    # tls_cert/tls_key (PEM files; the key may be inside the cert file). Outgoing TLS
    # checks the peer's certificate and host name against tls_ca (a PEM CA file; ""
    # = the system CAs) unless tls_verify is False; tls_cert also serves as our client
    # certificate. tls_require_client_cert: incoming TLS needs a cert signed by tls_ca.
    tls_port: int | None = None
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify: bool = True
    tls_require_client_cert: bool = False
    # RFC 3262: offer "Supported: 100rel" in our INVITEs (PRACK reliable 1xx from the
    # callee) and send our 180/183 reliably when the caller requires 100rel, or supports
    # it and the 1xx carries SDP.
    prack: bool = True
    # RFC 4028 session timers: the interval we ask for and grant (seconds, 0 = off) and
    # the shortest one we accept (shorter requests get 422 with Min-SE).
    session_expires: int = 1800
    min_se: int = 90
    # CANCEL our re-INVITE/hold when it got only provisional answers for this many
    # seconds and report 408 to its on_result (0 = wait for the transaction timeout).
    reinvite_timeout: float = 32.0


def tls_contexts(config: UAConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext]:
    """(server context or None when no listener/cert, client context) for `config`."""
    client = ssl.create_default_context(cafile=config.tls_ca or None)
    if not config.tls_verify:
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
    if config.tls_cert:
        client.load_cert_chain(config.tls_cert, config.tls_key or None)
    server = None
    if config.tls_port is not None and config.tls_cert:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(config.tls_cert, config.tls_key or None)
        if config.tls_require_client_cert:
            server.verify_mode = ssl.CERT_REQUIRED
            if config.tls_ca:
                server.load_verify_locations(config.tls_ca)
    return server, client


class _DialogOperations:
    """In-dialog operations shared by both INVITE session kinds (once the dialog exists).

    Callbacks run on the event loop like event handlers; they must not block.
    """

    _ua: UserAgent
    _session_id: str
    call_id: str

    def _init_operations(self) -> None:
        self._reinvite_results: dict[int, ReinviteResult] = {}
        self._refer_handlers: dict[int, ReferHandler] = {}
        self._message_results: dict[int, MessageResult] = {}
        self._reoffer_handler: ReofferHandler | None = None

    @property
    def local_tag(self) -> str:
        """Our tag in the dialog (From tag of an outbound call, To tag of an inbound one)."""
        return self._ua._core.session_tags(self._session_id)[0]

    @property
    def remote_tag(self) -> str:
        """The peer's tag in the dialog ("" before the dialog exists)."""
        return self._ua._core.session_tags(self._session_id)[1]

    @property
    def dialog_replaces(self) -> str:
        """The RFC 3891 Replaces value naming this dialog, as seen by the peer that will
        receive the INVITE with Replaces: "call-id;to-tag=<remote tag>;from-tag=<local tag>".
        Pass it to refer(..., replaces=...) on the other call of an attended transfer."""
        return replaces_value(self.call_id, self.remote_tag, self.local_tag)

    def reinvite(self, sdp: bytes, on_result: ReinviteResult) -> None:
        """Send a re-INVITE offering `sdp` (hold: a=sendonly/inactive, resume, codec change).

        `on_result(code, answer_sdp)` runs once: a 2xx code and the answer after the 2xx
        was ACKed, or the failure code with None (488, 408 timeout, 481 no dialog or the
        session ended, 491 when the RFC 3261 §14.1 glare retries gave up). A 491 is
        retried automatically after the randomised glare timer. Re-INVITEs issued while
        another INVITE transaction is in progress are queued. After a 408 or 481 the
        session ends (Terminated event) as RFC 5057 asks.
        """
        op, effects = self._ua._core.reinvite(self._session_id, sdp)
        self._reinvite_results[op] = on_result
        self._ua._execute(effects)

    def update(self, sdp: bytes, on_result: ReinviteResult) -> None:
        """Send UPDATE (RFC 3311) offering `sdp` in the dialog; `on_result(code, answer)`
        like reinvite(). Use it when `peer_allows("UPDATE")`; an UPDATE while another
        offer is in progress reports 491 at once. A 408 or 481 ends the session."""
        op, effects = self._ua._core.update(self._session_id, sdp)
        self._reinvite_results[op] = on_result
        self._ua._execute(effects)

    def peer_allows(self, method: str) -> bool:
        """The peer listed `method` (e.g. "UPDATE") in the Allow of its INVITE or 2xx."""
        return self._ua._core.peer_allows(self._session_id, method)

    def set_reoffer_handler(self, fn: ReofferHandler | None) -> None:
        """Answer the peer's re-INVITE/UPDATE offers with `fn(offer) -> answer`.

        `fn` runs synchronously; returning None (or raising) rejects the offer with 488.
        Without a handler offers are answered with our current SDP. A re-INVITE without
        SDP (late offer) calls `fn(None)` for our offer, which goes out in the 2xx; the
        peer's answer arrives in the ACK as a RemoteAnswer event. (Without a handler our
        current SDP is the offer.)
        """
        self._reoffer_handler = fn
        self._ua._core.delegate_offers(self._session_id, fn is not None)

    def info(self, content_type: str, body: bytes) -> None:
        """Send INFO (RFC 6086), e.g. application/dtmf-relay "Signal=5\r\nDuration=160\r\n".

        Incoming INFO is answered 200 and delivered as an InfoReceived event.
        """
        self._ua._execute(self._ua._core.info(self._session_id, content_type, body))

    def message(
        self, content_type: str, body: bytes, on_result: MessageResult | None = None
    ) -> None:
        """Send MESSAGE (RFC 3428) in the dialog; incoming ones arrive as MessageReceived.

        `on_result(code)` runs once with the final status (408 no answer, 503 transport
        failure, 481 no dialog).
        """
        op, effects = self._ua._core.send_message(self._session_id, content_type, body)
        if on_result is not None:
            self._message_results[op] = on_result
        self._ua._execute(effects)

    def defer_messages(self, on: bool = True) -> None:
        """`on`: incoming MESSAGEs are left unanswered for the owner: their MessageReceived
        event has an `op` to pass to respond_message() (a B2BUA relays the other side's
        answer). Unanswered after 64*T1 they get 504; when the session ends, 481."""
        self._ua._core.defer_messages(self._session_id, on)

    def respond_message(self, op: int, code: int) -> None:
        """Answer the deferred incoming MESSAGE `op` with `code` (200-699)."""
        self._ua._execute(self._ua._core.respond_message(self._session_id, op, code))

    def refer(
        self,
        target: str,
        replaces: str | None = None,
        on_progress: ReferHandler | None = None,
    ) -> None:
        """Transfer the peer to `target` with REFER (RFC 3515); 202 is not reported.

        `replaces` (e.g. the other call's `.dialog_replaces`) is embedded in Refer-To as an
        escaped Replaces header (RFC 3891) for an attended transfer. `on_progress(code)`
        gets each NOTIFY message/sipfrag status (100, 180, 200, 503...) and the REFER's
        own failure (405, 501, 603, 408 timeout, 481...); the last call has a final
        code (>= 200).
        """
        op, effects = self._ua._core.refer(self._session_id, target, replaces)
        if on_progress is not None:
            self._refer_handlers[op] = on_progress
        self._ua._execute(effects)

    def notify_refer(self, code: int, reason: str) -> None:
        """Report progress of the call a Referred event asked for (NOTIFY sipfrag):
        100/180/183 keep the subscription, a final code (200, 486, 503...) ends it."""
        self._ua._execute(self._ua._core.notify_refer(self._session_id, code, reason))

    def _reinvite_done(self, op: int, code: int, sdp: bytes | None) -> None:
        handler = self._reinvite_results.pop(op, None)
        if handler is not None:
            handler(code, sdp)

    def _message_done(self, op: int, code: int) -> None:
        handler = self._message_results.pop(op, None)
        if handler is not None:
            handler(code)

    def _refer_progress(self, op: int, code: int, final: bool) -> None:
        handler = self._refer_handlers.get(op)
        if final:
            self._refer_handlers.pop(op, None)
        if handler is not None:
            handler(code)

    def _answer_offer(self, sdp: bytes | None) -> bytes | None:
        if self._reoffer_handler is None:
            return None
        return self._reoffer_handler(sdp)


class OutboundInvite(_DialogOperations):
    """UAC INVITE session."""

    def __init__(self, ua: UserAgent, session_id: str, on_event: EventHandler) -> None:
        self._ua = ua
        self._session_id = session_id
        self.call_id = session_id
        self._on_event = on_event
        self._init_operations()

    def set_event_handler(self, fn: EventHandler) -> None:
        """Deliver this session's later events to `fn` instead of the invite() on_event."""
        self._on_event = fn

    def cancel(self) -> None:
        """CANCEL before a final response (once a provisional arrived); after 2xx: bye()."""
        self._ua._execute(self._ua._core.cancel(self._session_id))

    def bye(self) -> None:
        """BYE in a confirmed dialog; no-op when the session already ended."""
        self._ua._execute(self._ua._core.bye(self._session_id))

    def _deliver(self, event: SessionEvent) -> None:
        self._on_event(event)


class InboundInvite(_DialogOperations):
    """UAS INVITE session; the UA has already sent 100 Trying.

    `replaces` is the INVITE's Replaces header (RFC 3891) when it asks to take over an
    existing dialog ("call-id;to-tag=..;from-tag=.."), else None.
    """

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
        self.replaces = call.replaces
        self.asserted_identity = call.asserted_identity
        self.x_headers = call.x_headers
        self.authenticated_user = call.authenticated_user  # digest username, if challenged
        self._handler: EventHandler | None = None
        self._buffered: list[SessionEvent] = []
        self._init_operations()

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


class Registration:
    """A REGISTER client binding kept alive by the UA (see `UserAgent.register`).

    `state` is a `RegistrationState` ("registering", "registered", "failed",
    "unregistered"); `code` the last final status; `expires` the granted seconds.
    """

    def __init__(
        self, ua: UserAgent, op: int, aor: str, registrar: str, on_state: RegistrationHandler | None
    ) -> None:
        self._ua = ua
        self._op = op
        self.aor = aor
        self.registrar = registrar
        self.on_state = on_state
        self.state = RegistrationState.REGISTERING
        self.code = 0
        self.reason = ""
        self.expires = 0
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def registered(self) -> bool:
        return self.state is RegistrationState.REGISTERED

    def stop(self) -> None:
        """Unregister (REGISTER with Expires: 0) and stop refreshing; idempotent. The
        final update has state "unregistered"; `await wait_stopped()` waits for it."""
        if not self._stopped.done():
            self._ua._execute(self._ua._core.unregister(self._op))

    async def wait_stopped(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(asyncio.shield(self._stopped), timeout)

    def _update(self, update: RegistrationUpdate) -> None:
        self.state = update.state
        self.code = update.code
        self.reason = update.reason
        self.expires = update.expires
        if update.state is RegistrationState.UNREGISTERED and not self._stopped.done():
            self._stopped.set_result(None)
        if self.on_state is not None:
            self.on_state(update)


class UserAgent:
    """The SIP user agent on one address and port (UDP and TCP).

    `authenticator(username)` returns the user's password (str), a
    `sip.auth_server.Secret` with stored HA1 values, or None for an unknown user; it
    enables digest challenges (401, MD5 and SHA-256, qop=auth) for REGISTER and for
    INVITEs from sources outside `UAConfig.trusted_networks`. `registrar` holds the
    bindings of the built-in registrar (served when `UAConfig.registrar` is true):
    `ua.registrar.bindings(user)` gives each contact and the flow its REGISTER came on:
    call it with `invite(binding.contact, ..., flow=binding.source)` so the INVITE
    reaches a phone behind NAT or connected over TCP/TLS/WS (`lookup(user)`: the
    contact URIs alone).
    """

    def __init__(
        self,
        config: UAConfig,
        on_invite: Callable[[InboundInvite], None],
        *,
        authenticator: CredentialLookup | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.config = config
        self.on_invite = on_invite
        self.authenticator = authenticator
        # RFC 3263 lookups (NAPTR/SRV/A) for targets given by host name; run off the loop.
        self.resolver: Resolver = resolver or StdlibResolver()
        self.registrar = Registrar(
            time.monotonic, min_expires=config.min_expires, max_expires=config.max_expires
        )
        tls_server, tls_client = tls_contexts(config)
        self._transport = Transport(
            config.host,
            config.port,
            self._on_message,
            self._on_transport_error,
            config.keepalive_interval,
            tls_port=config.tls_port,
            tls_server=tls_server,
            tls_client=tls_client,
        )
        self._core_instance: UserAgentCore | None = None
        self._timers: dict[TimerKey, asyncio.TimerHandle] = {}
        self._sessions: dict[str, OutboundInvite | InboundInvite] = {}
        self._queue: deque[Effect] = deque()
        self._running = False
        self._pings: dict[int, Callable[[bool], None]] = {}
        self._qualifiers: list[Qualifier] = []
        self._registrations: dict[int, Registration] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind UDP and TCP on the configured address and port."""
        await self._transport.start()
        c = self.config
        digest = None
        if self.authenticator is not None:
            digest = DigestServer(
                c.realm or c.host,
                self.authenticator,
                key=secrets.token_bytes(32),
                clock=time.monotonic,
                random_hex=secrets.token_hex,
                algorithms=c.digest_algorithms,
                nonce_ttl=c.nonce_ttl,
            )
        policy = None
        if c.trusted_networks is not None:
            policy = AccessPolicy.from_strings(c.trusted_networks)
        limiter = None
        if c.request_rate > 0:
            limiter = RateLimiter(c.request_rate, c.request_burst, time.monotonic)
        self._core_instance = UserAgentCore(
            CoreConfig(
                host=c.host,
                port=self._transport.port,
                user_agent=c.user_agent,
                timers=TimerSettings(c.t1, c.t2, c.t4),
                tls_port=self._transport.tls_port,
                prack=c.prack,
                session_expires=c.session_expires,
                min_se=c.min_se,
                reinvite_timeout=c.reinvite_timeout,
            ),
            secrets.token_hex,
            digest=digest,
            registrar=self.registrar if c.registrar else None,
            policy=policy,
            rate_limiter=limiter,
        )

    @property
    def port(self) -> int:
        return self._transport.port

    def attach_websocket(
        self,
        send: WebSocketSend,
        close: Callable[[], object],
        remote: tuple[str, int],
        *,
        secure: bool = False,
    ) -> WebSocketConnection:
        """Serve SIP over a WebSocket (RFC 7118, subprotocol "sip") accepted by an
        external WebSocket server.

        `send(message)` writes one WebSocket text message (bytes for a binary one when
        a message is not UTF-8), `close()` closes the socket, `remote` is the client's
        address. Call `.receive(message)` on the returned handle for every message and
        `.closed()` when the socket is gone. Requests from it get responses on it; our
        Via says SIP/2.0/WS (WSS when `secure`) and our Contacts `;transport=ws`.
        """
        return self._transport.attach_websocket(send, close, remote, secure=secure)

    @property
    def tls_port(self) -> int | None:
        """The bound TLS port (None without a TLS listener)."""
        return self._transport.tls_port

    @property
    def _core(self) -> UserAgentCore:
        if self._core_instance is None:
            raise RuntimeError("UserAgent.start() has not been awaited")
        return self._core_instance

    def ping(self, target: str, on_result: Callable[[bool], None]) -> None:
        """Send one OPTIONS to `target`; `on_result(reachable)` runs when it completes
        (a final response other than 503: True; 503, timeout or transport error: False).
        An unusable target URI reports False from the loop."""
        try:
            op, effects = self._core.options(target)
        except ValueError:
            asyncio.get_running_loop().call_soon(on_result, False)
            return
        self._pings[op] = on_result
        self._execute(effects)

    def qualify(
        self,
        target: str,
        on_state: StateHandler,
        *,
        interval: float = 30.0,
        timeout: float = 5.0,
    ) -> Qualifier:
        """Keep pinging `target` with OPTIONS every `interval` s; `on_state(up)` runs on
        the first result and on every up/down change (no answer within `timeout` s is
        down). Stop it with `.stop()`; close() stops all."""
        qualifier = Qualifier(self, target, interval, on_state, timeout)
        self._qualifiers.append(qualifier)
        qualifier.start()
        return qualifier

    def register(
        self,
        aor: str,
        registrar: str,
        credentials: tuple[str, str] | None = None,
        expires: int = 600,
        on_state: RegistrationHandler | None = None,
        *,
        contact_user: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Registration:
        """Register `aor` ("sip:1001@pbx.example.com") at `registrar` ("sip:pbx.example.com
        [;transport=tcp]") and keep it registered until `.stop()` or close().

        Trunk mode: the gateway's own AOR (`contact_user` sets our Contact's user part,
        default the AOR's user); per-user mode: a user's AOR with their credentials
        (username, password) for digest. Refreshed before the granted expiry; failures
        (wrong password, 4xx-6xx, no answer) are retried with exponential back-off.
        `on_state(update)` gets every `RegistrationUpdate` (state, code, reason,
        expires, retry_in). Raises ValueError for unusable URIs or expires <= 0.
        """
        op, effects = self._core.register(
            aor,
            registrar,
            credentials,
            expires=expires,
            contact_user=contact_user,
            headers=headers,
        )
        registration = Registration(self, op, aor, registrar, on_state)
        self._registrations[op] = registration
        self._execute(effects)
        return registration

    @property
    def registrations(self) -> list[Registration]:
        """Registrations not yet unregistered."""
        return list(self._registrations.values())

    async def close(self) -> None:
        """Unregister every registration (waiting at most UNREGISTER_WAIT s for the
        answers), stop qualifying, then close the sockets."""
        for task in list(self._tasks):
            task.cancel()
        pending = [r for r in self._registrations.values() if not r._stopped.done()]
        for registration in pending:
            registration.stop()
        if pending:
            waits = [r.wait_stopped() for r in pending]
            try:
                await asyncio.wait_for(asyncio.gather(*waits), UNREGISTER_WAIT)
            except TimeoutError:
                log.info("unregistration unanswered at close")
        for qualifier in self._qualifiers:
            qualifier.stop()
        self._qualifiers.clear()
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
        fallback_targets: tuple[str, ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        flow: Peer | None = None,
    ) -> OutboundInvite:
        """Send an INVITE to `target` ("sip:user@host:port[;transport=tcp]").

        `flow`: `target` is a contact of our registrar and this its binding's `source`:
        the INVITE and the dialog's requests reuse the connection (or UDP address) the
        phone registered from (see `UserAgentCore.invite`); a closed TCP/TLS/WS flow
        makes the INVITE fail at once with Rejected(503).

        A host name is located with RFC 3263 (NAPTR, SRV, A/AAAA through the UA's
        resolver); each resulting target, then each of `fallback_targets` (other PBX
        URIs) in order, is tried until one answers with something other than 503, a
        timeout or a connection failure. An unusable target is reported as
        Rejected(416) from the loop, not raised; nothing resolving as Rejected(503).
        """
        try:
            session_id, effects = self._core.invite(
                target,
                from_user=from_user,
                from_display=from_display,
                sdp=sdp,
                credentials=credentials,
                fallback_targets=tuple(fallback_targets),
                headers=tuple(headers),
                flow=flow,
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
            case RegistrationUpdate(op, state):
                registration = self._registrations.get(op)
                if registration is not None:
                    if state is RegistrationState.UNREGISTERED:
                        del self._registrations[op]
                    self._run_callback(registration._update, effect)
            case OptionsResult(op):
                handler = self._pings.pop(op, None)
                if handler is not None:
                    self._run_callback(handler, effect.reachable)
            case ResolveTargets(session_id, uris):
                task = asyncio.get_running_loop().create_task(self._resolve(session_id, uris))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case OfferReceived(session_id, sdp):
                self._answer_offer(session_id, sdp)
            case OfferWanted(session_id):
                self._answer_offer(session_id, None)
            case ReinviteDone(session_id, op, code, sdp):
                session = self._sessions.get(session_id)
                if session is not None:
                    self._run_callback(session._reinvite_done, op, code, sdp)
            case MessageDone(session_id, op, code):
                session = self._sessions.get(session_id)
                if session is not None:
                    self._run_callback(session._message_done, op, code)
            case ReferProgress(session_id, op, code, final):
                session = self._sessions.get(session_id)
                if session is not None:
                    self._run_callback(session._refer_progress, op, code, final)
            case InviteReceived(call):
                inbound = InboundInvite(self, call)
                self._sessions[call.session_id] = inbound
                try:
                    self.on_invite(inbound)
                except Exception:
                    log.exception("on_invite failed; rejecting the call")
                    self._queue.extend(self._core.reject(call.session_id, 500))

    async def resolve(self, uri: str) -> list[tuple[str, Peer]]:
        """RFC 3263 targets of `uri` as (uri, next hop) pairs, in the order to try."""
        parsed = URI.parse(uri)
        loop = asyncio.get_running_loop()
        sample = secrets.randbelow

        def lookup() -> list[Peer]:
            return locate(parsed, self.resolver, lambda n: sample(n + 1))

        peers = await loop.run_in_executor(None, lookup)
        return [(uri, peer) for peer in peers]

    async def _resolve(self, session_id: str, uris: tuple[str, ...]) -> None:
        targets: list[tuple[str, Peer]] = []
        for uri in uris:
            try:
                targets += await self.resolve(uri)
            except ValueError:
                log.warning("cannot resolve %r", uri)
        if self._core_instance is not None:
            self._execute(self._core.targets_resolved(session_id, targets))

    def _answer_offer(self, session_id: str, offer: bytes | None) -> None:
        session = self._sessions.get(session_id)
        answer: bytes | None = None
        if session is not None:
            try:
                answer = session._answer_offer(offer)
            except Exception:
                log.exception("re-offer handler failed; rejecting the offer with 488")
        # Answer before anything queued behind the offer (the transaction waits for it).
        self._queue.extendleft(reversed(self._core.answer_offer(session_id, answer)))

    @staticmethod
    def _run_callback(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("session callback failed")

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
