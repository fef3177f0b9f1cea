"""The sans-I/O user agent core: INVITE sessions on top of the transaction layer.

Input: bytes from a peer, timer expiries, transport errors and API calls (invite,
cancel, bye, ringing, answer, reject). Output: a list of effects (Transmit, StartTimer,
CancelTimer, SessionUpdate, InviteReceived) for a runner to perform in order.
Randomness for Call-IDs, tags, branches and cnonces is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sipmessage import URI, Address, CSeq, Request, Response

from . import events
from .access import AccessPolicy, RateLimiter
from .admission import Admission
from .auth import DigestClient, credentials_header, pick_challenge
from .auth_server import DigestServer
from .body import accepts, extract_sdp
from .dialog import Dialog, DialogId, with_tag
from .effects import CancelTimer, StartTimer, TimerKey, Transmit
from .identity import asserted_identity
from .in_dialog import ALLOW, InDialogOperations
from .invite_session import (
    IncomingCall,
    IncomingSession,
    InDialogRequest,
    OutgoingSession,
    Session,
)
from .locate import needs_dns
from .messages import (
    BRANCH_MAGIC,
    MAX_FORWARDS,
    encode,
    from_tag,
    make_response,
    reason_phrase,
    to_tag,
)
from .peer import Peer, peer_for_uri
from .prack import REL, ReliableProvisionals, is_reliable
from .registrar import Registrar
from .registration import REGISTRATION_TIMER, Registration, RegistrationClients
from .session_timer import ST_TIMER, TIMER, SessionTimers
from .timers import TimerSettings
from .transaction_layer import (
    ClientFailed,
    LayerEffect,
    RequestReceived,
    ResponseReceived,
    ServerTimedOut,
    StrayResponse,
    TransactionKey,
    TransactionLayer,
)
from .ua_effects import (
    Effect,
    InviteReceived,
    MessageDone,
    OfferReceived,
    OfferWanted,
    OptionsResult,
    ReferProgress,
    ReinviteDone,
    ResolveTargets,
    SessionForgotten,
    SessionUpdate,
)

__all__ = [
    "ALLOW",
    "CoreConfig",
    "Effect",
    "InviteReceived",
    "MessageDone",
    "OfferReceived",
    "OfferWanted",
    "OptionsResult",
    "ReferProgress",
    "ReinviteDone",
    "SessionForgotten",
    "SessionUpdate",
    "UserAgentCore",
]

SDP = "application/sdp"
# Option tags (RFC 3261 §19.2) we honour in Require (plus 100rel and timer when on).
SUPPORTED = frozenset({"replaces", "norefersub"})
# Methods we know but do not serve outside a dialog get 405; anything else 501.
IN_DIALOG_METHODS = frozenset({"OPTIONS", "INFO", "MESSAGE", "INVITE", "UPDATE", "REFER", "NOTIFY"})
KNOWN_METHODS = frozenset(
    {"REGISTER", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "INFO", "UPDATE", "PRACK", "PUBLISH"}
)


@dataclass(frozen=True)
class CoreConfig:
    host: str = "127.0.0.1"
    port: int = 5060
    user_agent: str = "webrtc-gateway"
    timers: TimerSettings = TimerSettings()
    tls_port: int | None = None  # where TLS listens, for Via/Contact of TLS requests
    prack: bool = True  # RFC 3262: Supported: 100rel on INVITEs, reliable 1xx as UAS
    session_expires: int = 1800  # RFC 4028 interval we ask for / grant; 0 = no timers
    min_se: int = 90  # the shortest Session-Expires we accept (smaller: 422)
    reinvite_timeout: float = 0.0  # CANCEL a re-INVITE with only 1xx after this (0 = never)

    @property
    def option_tags(self) -> frozenset[str]:
        """Option tags we support: in Supported, and accepted in Require."""
        tags = set(SUPPORTED)
        if self.prack:
            tags.add(REL)
        if self.session_expires:
            tags.add(TIMER)
        return frozenset(tags)

    def port_for(self, transport: str) -> int:
        if transport == "TLS" and self.tls_port is not None:
            return self.tls_port
        return self.port


class UserAgentCore(
    InDialogOperations, Admission, RegistrationClients, ReliableProvisionals, SessionTimers
):
    def __init__(
        self,
        config: CoreConfig,
        random_hex: Callable[[int], str],
        *,
        digest: DigestServer | None = None,
        registrar: Registrar | None = None,
        policy: AccessPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        """`random_hex(n)` returns 2n random hex digits (n random bytes).

        `registrar` set: REGISTER is served (digest-authenticated when `digest` is set).
        `policy` set: INVITEs from untrusted sources need digest credentials (401
        challenge) or get 403; unset: INVITEs are accepted from anyone. `rate_limiter`:
        INVITE/REGISTER per source host beyond it get 503 with Retry-After.
        """
        self.config = config
        self._hex = random_hex
        self.digest = digest
        self.registrar = registrar
        self.policy = policy
        self.rate_limiter = rate_limiter
        self.layer = TransactionLayer(config.timers)
        self.sessions: dict[str, Session] = {}
        self._client_txns: dict[TransactionKey, tuple[str, str]] = {}  # -> (session, purpose)
        self._server_invites: dict[TransactionKey, str] = {}
        self._dialogs: dict[DialogId, str] = {}
        self._early_uas: dict[DialogId, str] = {}  # early dialogs of our reliable 1xx
        self._uac_calls: dict[tuple[str, str], str] = {}  # (Call-ID, local tag) -> session
        self._incoming_invites: dict[tuple[str, str, int], str] = {}  # merged-request check
        self._options: dict[TransactionKey, int] = {}  # our qualify OPTIONS -> op
        self._next_options = 1
        self._registrations: dict[int, Registration] = {}
        self._registration_txns: dict[TransactionKey, int] = {}
        self._next_registration = 1

    # -- identifiers -----------------------------------------------------------------

    def new_branch(self) -> str:
        return BRANCH_MAGIC + self._hex(12)

    def new_tag(self) -> str:
        return self._hex(8)

    def new_call_id(self) -> str:
        return self._hex(16)

    def _via(self, transport: str) -> str:
        c = self.config
        port = c.port_for(transport)
        return f"SIP/2.0/{transport} {c.host}:{port};branch={self.new_branch()};rport"

    @property
    def _server_name(self) -> str:
        return self.config.user_agent

    def _contact(self, user: str, transport: str) -> str:
        c = self.config
        reliable = ("TCP", "TLS", "WS", "WSS")
        params = f";transport={transport.lower()}" if transport in reliable else ""
        user_part = f"{user}@" if user else ""
        return f"<sip:{user_part}{c.host}:{c.port_for(transport)}{params}>"

    # -- inputs ----------------------------------------------------------------------

    def receive(self, data: bytes, source: Peer) -> list[Effect]:
        try:
            return self._run(self.layer.receive(data, source))
        except ValueError:
            # A header parsed lazily (Contact, Require, auth...) was malformed after the
            # message got past validation: drop it like any other unparseable message.
            return []

    def timer_fired(self, key: TimerKey) -> list[Effect]:
        if self.layer.owns_timer(key):
            return self._run(self.layer.timer_fired(key))
        kind, sid, what = key
        if kind == REGISTRATION_TIMER:
            return self._registration_timer(sid, what)
        session = self.sessions.get(sid)
        if session is None:
            return []
        if kind == "dlg":
            return self._dialog_timer(session, what)
        if kind == ST_TIMER:
            return self._st_timer(session, what)
        if kind == "forget":
            self._forget(session)
            return [SessionForgotten(sid)]
        if isinstance(session, IncomingSession):
            return self._uas_timer(session, what)
        if what == "cancel" and not session.final:
            # RFC 3261 §9.1: no final response 64*T1 after CANCEL; give the INVITE up.
            session.final = True
            return self._end(session, events.Rejected(487, reason_phrase(487)))
        return []

    def transport_error(self, peer: Peer) -> list[Effect]:
        effects = self._run(self.layer.transport_error(peer))
        for session in list(self.sessions.values()):
            if (
                isinstance(session, IncomingSession)
                and not session.ended
                and session.answer is not None
                and not session.confirmed
                and session.response_peer == peer
            ):
                effects += self._end(session, events.Terminated("transport"))
        return effects

    # -- UAC API ---------------------------------------------------------------------

    def invite(
        self,
        target: str,
        *,
        from_user: str,
        from_display: str = "",
        sdp: bytes | None,
        credentials: tuple[str, str] | None = None,
        fallback_targets: tuple[str, ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        flow: Peer | None = None,
    ) -> tuple[str, list[Effect]]:
        """Start an outgoing call; returns its session id (its Call-ID) and effects.

        `flow`: the target is a contact registered with our registrar and this is where
        its REGISTER came from (`Binding.source`). The INVITE goes there, bypassing
        RFC 3263 and the fallbacks, with `target` as Request-URI; so do the dialog's
        requests while the remote target keeps the target's host and port and there is
        no route set. A TCP/TLS/WS flow is never re-dialled: once the phone's
        connection is gone the INVITE fails at once (Rejected 503) instead of trying
        the phone's ephemeral port or hanging on a NATed address.

        `fallback_targets` are tried in order after `target` when it (and every
        RFC 3263 target it resolves to) answers 503, times out or fails to connect
        before any provisional response. When a host needs DNS the effects hold a
        ResolveTargets; the INVITE leaves on `targets_resolved()`.
        Raises ValueError for an unusable target URI.
        """
        uris = [URI.parse(t) for t in (target, *fallback_targets)]
        for one in uris:
            if one.scheme not in ("sip", "sips") or not one.host:
                raise ValueError(f"cannot send an INVITE to {str(one)!r}")
        uri = uris[0]
        if flow is not None:
            uris = [uri]
            flow = replace(flow, flow=True)
        resolving = flow is None and any(needs_dns(one) for one in uris)
        if flow is not None:
            peer = flow
        else:
            peer = peer_for_uri(uri) if not resolving else Peer("UDP", "0.0.0.0", 0)
        c = self.config
        local = Address(URI("sip", c.host, user=from_user or None, port=c.port), name=from_display)
        local = with_tag(local, self.new_tag())
        remote = Address(URI(uri.scheme, uri.host, user=uri.user, port=uri.port))
        call_id = self.new_call_id()
        contact = self._contact(from_user, peer.transport)
        session = OutgoingSession(
            id=call_id,
            target=uri,
            peer=peer,
            local=local,
            remote=remote,
            call_id=call_id,
            sdp=sdp,
            contact=contact,
            invite=Request("INVITE", uri),
            invite_key=(),
            digest=DigestClient(*credentials) if credentials else None,
            alternatives=[(one, peer_for_uri(one)) for one in uris[1:]] if not resolving else [],
            resolving=resolving,
            session_expires=c.session_expires,
            min_se=min(c.min_se, c.session_expires),
            extra_headers=tuple(headers),
            flow=flow,
        )
        self.sessions[call_id] = session
        self._uac_calls[(call_id, from_tag_of(local))] = call_id
        if resolving:
            return call_id, [ResolveTargets(call_id, tuple(str(one) for one in uris))]
        return call_id, self._send_invite(session, 1, None)

    def targets_resolved(self, sid: str, targets: list[tuple[str, Peer]]) -> list[Effect]:
        """The (Request-URI, next hop) list for a ResolveTargets, in order; [] means
        nothing resolved (the call is rejected with 503)."""
        s = self.sessions.get(sid)
        if not isinstance(s, OutgoingSession) or not s.resolving:
            return []
        s.resolving = False
        if s.ended or s.final:
            return []
        if s.cancel_requested:
            s.final = True
            return self._end(s, events.Rejected(487, reason_phrase(487)))
        if not targets:
            s.final = True
            return self._end(s, events.Rejected(503, "No Target Resolved"))
        s.alternatives = [(URI.parse(uri), peer) for uri, peer in targets]
        return self._next_target(s, 1)

    def _next_target(self, s: OutgoingSession, sequence: int) -> list[Effect]:
        """Send the INVITE (again, in a new transaction) to the next alternative."""
        uri, peer = s.alternatives.pop(0)
        s.target = uri
        s.peer = peer
        s.contact = self._contact(s.local.uri.user or "", peer.transport)
        s.provisional = False
        s.auth_tried = False
        return self._send_invite(s, sequence, None)

    def _failover(self, s: OutgoingSession) -> list[Effect] | None:
        """RFC 3263 §4.3: on 503, timeout or transport failure before any provisional
        response, try the next target; None when there is none left."""
        if not s.alternatives or s.provisional or s.cancel_requested or s.final:
            return None
        return self._next_target(s, s.invite.cseq.sequence + 1)

    def _send_invite(
        self, s: OutgoingSession, sequence: int, authorization: tuple[str, str] | None
    ) -> list[Effect]:
        request = Request("INVITE", s.target, s.sdp or b"")
        headers = request.headers
        headers.set("Via", self._via(s.peer.transport))
        headers.set("Max-Forwards", str(MAX_FORWARDS))
        request.from_address = s.local
        request.to_address = s.remote
        request.call_id = s.call_id
        request.cseq = CSeq(sequence, "INVITE")
        headers.set("Contact", s.contact)
        if authorization:
            headers.set(*authorization)
        headers.set("Allow", ALLOW)
        supported = [tag for tag in (REL, TIMER) if tag in self.config.option_tags]
        if supported:
            headers.set("Supported", ", ".join(supported))
        for name, value in self._st_invite_headers(s):
            headers.set(name, value)
        for name, value in s.extra_headers:
            headers.add(name, value)
        headers.set("User-Agent", self.config.user_agent)
        if s.sdp:
            headers.set("Content-Type", SDP)
        s.early.clear()
        s.invite = request
        key, effects = self.layer.send_request(request, s.peer)
        s.invite_key = key
        s.transactions.add(key)
        self._client_txns[key] = (s.id, "invite")
        return self._run(effects)

    def options(self, target: str, *, from_user: str = "") -> tuple[int, list[Effect]]:
        """Send an out-of-dialog OPTIONS to `target` (qualify, RFC 3261 §11).

        Returns its op number; the outcome comes as an OptionsResult effect. Raises
        ValueError for an unusable target URI.
        """
        uri = URI.parse(target)
        if uri.scheme not in ("sip", "sips") or not uri.host:
            raise ValueError(f"cannot send OPTIONS to {target!r}")
        peer = peer_for_uri(uri)
        c = self.config
        request = Request("OPTIONS", uri)
        headers = request.headers
        headers.set("Via", self._via(peer.transport))
        headers.set("Max-Forwards", str(MAX_FORWARDS))
        local = Address(URI("sip", c.host, user=from_user or None, port=c.port))
        request.from_address = with_tag(local, self.new_tag())
        request.to_address = Address(URI(uri.scheme, uri.host, user=uri.user, port=uri.port))
        request.call_id = self.new_call_id()
        request.cseq = CSeq(1, "OPTIONS")
        headers.set("Contact", self._contact(from_user, peer.transport))
        headers.set("Accept", SDP)
        headers.set("User-Agent", c.user_agent)
        op = self._next_options
        self._next_options += 1
        key, effects = self.layer.send_request(request, peer)
        self._options[key] = op
        return op, self._run(effects)

    def cancel(self, sid: str) -> list[Effect]:
        s = self.sessions.get(sid)
        if not isinstance(s, OutgoingSession) or s.ended:
            return []
        if s.final:
            return self.bye(sid)
        if s.cancel_requested:
            return []
        s.cancel_requested = True
        if s.resolving:
            s.final = True  # nothing was sent yet
            return self._end(s, events.Rejected(487, reason_phrase(487)))
        if s.provisional:
            return self._send_cancel(s)
        # RFC 3261 §9.1: a CANCEL may only follow a provisional response.
        return []

    def _send_cancel(self, s: OutgoingSession) -> list[Effect]:
        s.cancel_sent = True
        invite = s.invite
        cancel = Request("CANCEL", invite.uri)
        headers = cancel.headers
        headers.set("Via", invite.headers.getlist("Via")[0])
        headers.set("Max-Forwards", str(MAX_FORWARDS))
        headers.set("From", invite.headers["From"])
        headers.set("To", invite.headers["To"])
        headers.set("Call-ID", invite.call_id)
        cancel.cseq = CSeq(invite.cseq.sequence, "CANCEL")
        headers.set("User-Agent", self.config.user_agent)
        key, effects = self.layer.send_request(cancel, s.peer)
        self._client_txns[key] = (s.id, "cancel")
        s.transactions.add(key)
        out = self._run(effects)
        out.append(StartTimer(("uac", s.id, "cancel"), self.config.timers.timeout))
        return out

    def bye(self, sid: str) -> list[Effect]:
        s = self.sessions.get(sid)
        if s is None or s.ended:
            return []
        if isinstance(s, OutgoingSession):
            if not s.final:
                return self.cancel(sid)
            s.ended = True
            return self._send_bye(s, s.dialog) + self._schedule_forget(s)
        if not s.final:
            return self.reject(sid, 480)
        s.ended = True
        return self._stop_uas_timers(s) + self._send_bye(s, s.dialog) + self._schedule_forget(s)

    def _send_bye(self, s: Session, dialog: Dialog | None) -> list[Effect]:
        if dialog is None:
            return []
        request = dialog.create_request("BYE")
        peer = self._dialog_peer(s, dialog)
        request.headers.add("Via", self._via(peer.transport))
        request.headers.set("User-Agent", self.config.user_agent)
        key, effects = self.layer.send_request(request, peer)
        self._client_txns[key] = (s.id, "bye")
        s.transactions.add(key)
        s.usage.sent[key] = InDialogRequest("BYE", b"", None, [], "bye")
        return self._run(effects) + self._st_stop(s)

    def _dialog_peer(self, s: Session, dialog: Dialog) -> Peer:
        peer = peer_for_uri(dialog.next_hop())
        if isinstance(s, IncomingSession) and s.source.reliable and not dialog.route_set:
            # Reuse the caller's connection: its Contact port is often not listening.
            return s.source
        if isinstance(s, IncomingSession) and s.flow_target is not None and not dialog.route_set:
            target = dialog.remote_target
            if (target.host, _port(target)) == s.flow_target:
                return s.source  # a registered phone's NAT binding (see _registered_flow)
        if isinstance(s, OutgoingSession) and s.flow is not None and not dialog.route_set:
            target = dialog.remote_target
            if (target.host, _port(target)) == (s.target.host, _port(s.target)):
                # The registered contact answered: keep to the flow it registered from.
                return s.flow
        if isinstance(s, OutgoingSession) and s.peer.reliable and peer.transport == "UDP":
            return Peer(s.peer.transport, peer.host, peer.port)
        return peer

    # -- UAS API ---------------------------------------------------------------------

    def ringing(self, sid: str, sdp: bytes | None = None) -> list[Effect]:
        s = self.sessions.get(sid)
        if not isinstance(s, IncomingSession) or s.final or s.ended:
            return []
        code = 183 if sdp else 180
        if self._reliable_wanted(s, sdp):
            return self._provisional(s, code, sdp)
        if s.reliable is not None and s.reliable.outstanding is not None:
            return []  # a reliable 1xx awaits its PRACK: an unreliable one adds nothing
        return self._respond(s, code, None, sdp)

    def answer(self, sid: str, sdp: bytes) -> list[Effect]:
        s = self.sessions.get(sid)
        if not isinstance(s, IncomingSession) or s.final or s.ended:
            return []
        if self._answer_deferred(s, sdp):
            return []  # sent when the PRACK of our 1xx with SDP arrives
        effects = self._stop_reliable(s)
        s.final = True
        s.local_sdp = sdp
        dialog = Dialog.from_uas(s.invite, s.local_tag)
        s.dialog = dialog
        self._dialogs[dialog.id] = s.id
        response = self._response_for(s, 200, None, sdp)
        for name, value in self._st_uas_answer(s):
            response.headers.set(name, value)
        s.answer = encode(response)
        effects += self._run(self.layer.respond(s.key, response))
        timers = self.config.timers
        if not s.response_peer.reliable:
            s.retransmit_interval = timers.t1
            effects.append(StartTimer(("uas", s.id, "2xx"), timers.t1))
        effects.append(StartTimer(("uas", s.id, "ack"), timers.timeout))
        return effects

    def reject(self, sid: str, code: int, reason: str = "") -> list[Effect]:
        s = self.sessions.get(sid)
        if not isinstance(s, IncomingSession) or s.final or s.ended:
            return []
        if not 300 <= code <= 699:
            raise ValueError(f"reject needs a 3xx-6xx code, not {code}")
        s.final = True
        s.ended = True
        effects = self._stop_reliable(s)
        return effects + self._respond(s, code, reason or None, None) + self._schedule_forget(s)

    def _response_for(
        self, s: IncomingSession, code: int, reason: str | None, sdp: bytes | None
    ) -> Response:
        response = make_response(
            s.invite,
            code,
            reason,
            to_tag=s.local_tag if code > 100 else None,
            server=self.config.user_agent,
            body=sdp or b"",
            content_type=SDP,
        )
        if 100 < code < 300:
            routes = s.invite.headers.getlist("Record-Route")
            if routes:
                response.headers.setlist("Record-Route", list(routes))
            response.headers.set("Contact", s.contact)
            response.headers.set("Allow", ALLOW)
        return response

    def _respond(
        self, s: IncomingSession, code: int, reason: str | None, sdp: bytes | None
    ) -> list[Effect]:
        return self._run(self.layer.respond(s.key, self._response_for(s, code, reason, sdp)))

    def _uas_timer(self, s: IncomingSession, what: str) -> list[Effect]:
        if what in ("rel", "relgiveup"):
            return self._reliable_timer(s, what)
        if s.ended or s.confirmed or s.answer is None:
            return []
        if what == "2xx":
            s.retransmit_interval = min(s.retransmit_interval * 2, self.config.timers.t2)
            return [
                Transmit(s.response_peer, s.answer),
                StartTimer(("uas", s.id, "2xx"), s.retransmit_interval),
            ]
        if what == "ack":
            # RFC 3261 §13.3.1.4: no ACK within 64*T1 - confirm, then end the session.
            effects = self._end(s, events.Terminated("timeout"))
            return effects + self._send_bye(s, s.dialog)
        return []

    def _stop_uas_timers(self, s: IncomingSession) -> list[Effect]:
        return [
            CancelTimer(("uas", s.id, "2xx")),
            CancelTimer(("uas", s.id, "ack")),
            CancelTimer(("uas", s.id, "rel")),
            CancelTimer(("uas", s.id, "relgiveup")),
        ]

    # -- session bookkeeping -----------------------------------------------------------

    def _end(self, s: Session, event: events.SessionEvent) -> list[Effect]:
        s.ended = True
        effects: list[Effect] = self._abort_usage(s)
        if isinstance(s, IncomingSession):
            effects += self._stop_uas_timers(s)
        else:
            effects.append(CancelTimer(("uac", s.id, "cancel")))
        if not s.reported:
            s.reported = True
            effects.append(SessionUpdate(s.id, event))
        return effects + self._schedule_forget(s)

    def _schedule_forget(self, s: Session) -> list[Effect]:
        # Keep the session around for late retransmissions (2xx to re-ACK, BYE, CANCEL).
        return [StartTimer(("forget", s.id, ""), 2 * self.config.timers.timeout)]

    def _forget(self, s: Session) -> None:
        self.sessions.pop(s.id, None)
        for key in s.transactions:
            self._client_txns.pop(key, None)
            self._server_invites.pop(key, None)
        if s.dialog is not None:
            self._dialogs.pop(s.dialog.id, None)
        if isinstance(s, IncomingSession):
            remote = from_tag(s.invite) or ""
            self._early_uas.pop(DialogId(s.invite.call_id, s.local_tag, remote), None)
        if isinstance(s, OutgoingSession):
            self._uac_calls.pop((s.call_id, from_tag_of(s.local)), None)
        else:
            self._incoming_invites.pop(self._merge_key(s.invite), None)

    @staticmethod
    def _merge_key(request: Request) -> tuple[str, str, int]:
        return (request.call_id, from_tag(request) or "", request.cseq.sequence)

    # -- transaction layer output ------------------------------------------------------

    def _run(self, layer_effects: list[LayerEffect]) -> list[Effect]:
        out: list[Effect] = []
        for effect in layer_effects:
            match effect:
                case Transmit() | StartTimer() | CancelTimer():
                    out.append(effect)
                case RequestReceived(key, request, source):
                    out += self._on_request(key, request, source)
                case ResponseReceived(key, response):
                    out += self._on_response(key, response)
                case StrayResponse(response, _):
                    out += self._on_stray_2xx(response)
                case ClientFailed(key, timeout):
                    out += self._on_client_failed(key, timeout)
                case ServerTimedOut():
                    pass
        return out

    def _on_client_failed(self, key: TransactionKey, timeout: bool) -> list[Effect]:
        if key in self._registration_txns:
            return self._on_registration_failed(key, timeout)
        if (op := self._options.pop(key, None)) is not None:
            return [OptionsResult(op, 408 if timeout else 503, False)]
        owner = self._client_txns.get(key)
        if owner is None:
            return []
        s = self.sessions.get(owner[0])
        if s is None:
            return []
        purpose = owner[1]
        if purpose == "bye":
            # Also after our own bye(): the owner learns the far end never answered it.
            return self._end(s, events.Terminated("timeout" if timeout else "transport"))
        if s.ended:
            return []
        if purpose != "invite":
            return self._on_dialog_failure(s, purpose, key, timeout)
        if purpose == "invite" and isinstance(s, OutgoingSession) and not s.final:
            if key == s.invite_key and (retry := self._failover(s)) is not None:
                return retry
            s.final = True
            code = 408 if timeout else 503
            return self._end(s, events.Rejected(code, reason_phrase(code)))
        return []

    # -- UAC responses ---------------------------------------------------------------

    def _on_response(self, key: TransactionKey, response: Response) -> list[Effect]:
        if key in self._registration_txns:
            return self._on_registration_response(key, response)
        if key in self._options:
            if response.code < 200:
                return []
            return [OptionsResult(self._options.pop(key), response.code, True)]
        owner = self._client_txns.get(key)
        if owner is None:
            return []
        s = self.sessions.get(owner[0])
        if s is None:
            return []
        if owner[1] == "bye" and response.code in (401, 407):
            sent = s.usage.sent.pop(key, None)
            if sent is not None:
                return self._retry_in_dialog(s, key, sent, response) or []
        if owner[1] not in ("invite", "bye", "cancel"):
            return self._on_dialog_response(s, owner[1], key, response)
        if not isinstance(s, OutgoingSession) or owner[1] != "invite":
            return []
        return self._on_invite_response(s, response)

    def _on_invite_response(self, s: OutgoingSession, response: Response) -> list[Effect]:
        code = response.code
        if 200 <= code < 300:
            return self._on_2xx(s, response)
        if s.final or code == 100:
            return []
        sdp = response.body or None
        if code < 200:
            s.provisional = True
            effects: list[Effect] = []
            rseq = is_reliable(response) if REL in self.config.option_tags else None
            if rseq is not None:
                effects, fresh = self._uac_reliable(s, response, rseq)
                if not fresh:
                    return effects
            if s.cancel_requested:
                if not s.cancel_sent:
                    effects += self._send_cancel(s)
                return effects
            effects.append(SessionUpdate(s.id, events.Provisional(code, response.phrase, sdp)))
            return effects
        if code == 503 and (retry := self._failover(s)) is not None:
            return retry
        if code == 422 and not s.cancel_requested and self._st_retry_422(s, response):
            s.provisional = False
            return self._send_invite(s, s.invite.cseq.sequence + 1, None)
        if code in (401, 407) and s.digest is not None and not s.auth_tried:
            if not s.cancel_requested:
                retry = self._authenticate(s, response)
                if retry is not None:
                    return retry
        s.final = True
        return self._end(s, events.Rejected(code, response.phrase))

    def _authenticate(self, s: OutgoingSession, response: Response) -> list[Effect] | None:
        assert s.digest is not None
        s.auth_tried = True
        if response.code == 401:
            values, header = response.headers.getlist("WWW-Authenticate"), "Authorization"
        else:
            values = response.headers.getlist("Proxy-Authenticate")
            header = "Proxy-Authorization"
        challenge = pick_challenge(values)
        if challenge is None:
            return None
        credentials = s.digest.answer(
            challenge, method="INVITE", uri=str(s.target), cnonce=self._hex(8)
        )
        s.provisional = False
        return self._send_invite(
            s, s.invite.cseq.sequence + 1, (header, credentials_header(credentials))
        )

    def _on_2xx(self, s: OutgoingSession, response: Response) -> list[Effect]:
        remote_tag = to_tag(response) or ""
        if s.dialog is not None:
            if s.dialog.remote_tag == remote_tag:
                # A retransmitted 2xx: our ACK was lost, send it again (§13.2.2.4).
                if s.ack is not None and s.ack_peer is not None:
                    return [Transmit(s.ack_peer, s.ack)]
                return []
            return self._ack_and_bye_fork(s, response)
        s.final = True
        dialog = Dialog.from_uac(s.invite, response)
        self._continue_early_cseq(s, dialog)
        s.dialog = dialog
        self._dialogs[dialog.id] = s.id
        ack = dialog.create_ack(s.invite.cseq.sequence)
        peer = self._dialog_peer(s, dialog)
        ack.headers.add("Via", self._via(peer.transport))
        ack.headers.set("User-Agent", self.config.user_agent)
        s.ack = encode(ack)
        s.ack_peer = peer
        effects: list[Effect] = [Transmit(peer, s.ack)]
        if s.cancel_requested or s.ended:
            # Our CANCEL lost the race with the 2xx: confirm, then hang up at once.
            effects += self._send_bye(s, dialog)
            if not s.ended:
                effects += self._end(s, events.Rejected(487, reason_phrase(487)))
            return effects
        effects.append(CancelTimer(("uac", s.id, "cancel")))
        effects += self._st_uac_answered(s, response)
        effects.append(SessionUpdate(s.id, events.Answered(response.body or None)))
        return effects

    def _ack_and_bye_fork(self, s: OutgoingSession, response: Response) -> list[Effect]:
        """A 2xx from a second fork: ACK it and hang that dialog up (§13.2.2.4)."""
        dialog = Dialog.from_uac(s.invite, response)
        peer = self._dialog_peer(s, dialog)
        ack = dialog.create_ack(s.invite.cseq.sequence)
        ack.headers.add("Via", self._via(peer.transport))
        effects: list[Effect] = [Transmit(peer, encode(ack))]
        bye = dialog.create_request("BYE")
        bye.headers.add("Via", self._via(peer.transport))
        key, layer_effects = self.layer.send_request(bye, peer)
        s.transactions.add(key)
        return effects + self._run(layer_effects)

    def _on_stray_2xx(self, response: Response) -> list[Effect]:
        tag = from_tag(response) or ""
        sid = self._uac_calls.get((response.call_id, tag))
        if sid is None:
            sid = self._dialogs.get(DialogId(response.call_id, tag, to_tag(response) or ""))
        s = self.sessions.get(sid) if sid else None
        if s is None:
            return []
        if isinstance(s, IncomingSession) or response.cseq.sequence != s.invite.cseq.sequence:
            # A late 2xx retransmission for one of our re-INVITEs: re-send its ACK.
            return self._ack_reinvite(s, response) if s.dialog is not None else []
        return self._on_2xx(s, response)

    # -- UAS requests ----------------------------------------------------------------

    def _reply(
        self, key: TransactionKey, request: Request, code: int, *, tag: str | None = None
    ) -> list[Effect]:
        response = make_response(
            request, code, to_tag=tag or self.new_tag(), server=self.config.user_agent
        )
        if code == 405 or (request.method == "OPTIONS" and code == 200):
            response.headers.set("Allow", ALLOW)
        if request.method == "OPTIONS" and code == 200:
            response.headers.set("Accept", SDP)
        return self._run(self.layer.respond(key, response))

    def _on_request(
        self, key: TransactionKey | None, request: Request, source: Peer
    ) -> list[Effect]:
        if key is None:
            return self._on_ack(request) if request.method == "ACK" else []
        method = request.method
        if method == "CANCEL":
            return self._on_cancel(key, request)
        supported = self.config.option_tags
        required = [tag for tag in request.require if tag.lower() not in supported]
        if required:
            response = make_response(
                request, 420, "Bad Extension", to_tag=self.new_tag(), server=self.config.user_agent
            )
            response.headers.set("Unsupported", ", ".join(required))
            return self._run(self.layer.respond(key, response))
        if method == "PRACK":
            return self._on_prack(key, request)
        if to_tag(request) is not None:
            return self._on_in_dialog(key, request)
        limited = self._rate_limited(key, request, source)
        if limited is not None:
            return limited
        if method == "INVITE":
            if self._merge_key(request) in self._incoming_invites:
                # Same request reached us twice along different paths (RFC 3261 §8.2.2.2).
                return self._reply(key, request, 482)
            rejection, user = self._admit_invite(key, request, source)
            if rejection is not None:
                return rejection
            refused = self._refuse_invite(key, request)
            if refused is not None:
                return refused
            return self._on_invite(key, request, source, user)
        if method == "REGISTER":
            return self._on_register(key, request, source)
        if method == "OPTIONS":
            return self._reply(key, request, 200)
        if method == "BYE":
            return self._reply(key, request, 481)
        return self._reply(key, request, 405 if method in KNOWN_METHODS else 501)

    def _refuse_invite(self, key: TransactionKey, request: Request) -> list[Effect] | None:
        """483 when Max-Forwards is exhausted (we would forward the call as a B2BUA),
        415 for a body without SDP (RFC 4475 invut), 406 when the caller's Accept rules
        out SDP (sdp01)."""
        max_forwards = request.headers.get("Max-Forwards")
        if max_forwards is not None and int(max_forwards.strip()) == 0:
            return self._stateful_reply(key, request, 483)
        body_sdp = extract_sdp(request.headers.get("Content-Type"), request.body)
        if request.body and body_sdp is None:
            return self._stateful_reply(key, request, 415, [("Accept", SDP)])
        if not accepts(request.headers.getlist("Accept")):
            return self._stateful_reply(key, request, 406, [("Accept", SDP)])
        min_se = self._st_too_small(request)
        if min_se is not None:
            return self._stateful_reply(key, request, 422, [("Min-SE", str(min_se))])
        return None

    def _on_invite(
        self, key: TransactionKey, request: Request, source: Peer, user: str | None = None
    ) -> list[Effect]:
        sid = self._hex(8)
        response_peer = self.layer.server_peer(key) or source
        s = IncomingSession(
            id=sid,
            invite=request,
            key=key,
            source=source,
            response_peer=response_peer,
            local_tag=self.new_tag(),
            contact=self._contact(request.uri.user or "", source.transport),
            flow_target=self._registered_flow(request, source),
        )
        self.sessions[sid] = s
        self._server_invites[key] = sid
        self._incoming_invites[self._merge_key(request)] = sid
        s.transactions.add(key)
        effects = self._respond(s, 100, None, None)
        from_address = request.from_address
        effects.append(
            InviteReceived(
                IncomingCall(
                    session_id=sid,
                    call_id=request.call_id,
                    request_user=request.uri.user or "",
                    caller_user=from_address.uri.user or "",
                    caller_display=from_address.name,
                    sdp=extract_sdp(request.headers.get("Content-Type"), request.body),
                    source=source,
                    replaces=request.headers.get("Replaces"),
                    authenticated_user=user,
                    asserted_identity=asserted_identity(request),
                    x_headers=tuple(
                        (name, value)
                        for name in request.headers.keys()
                        if name.lower().startswith("x-")
                        for value in request.headers.getlist(name)
                    ),
                )
            )
        )
        return effects

    def _registered_flow(self, request: Request, source: Peer) -> tuple[str, int] | None:
        """(host, port) of the INVITE's Contact when the caller registered that contact
        with our registrar from this very UDP source (a phone behind NAT calling us):
        its in-dialog requests then go to the source, where its NAT lets them in."""
        if self.registrar is None or source.reliable:
            return None
        try:
            contacts = Address.parse_many(request.headers.get("Contact") or "")
        except ValueError:
            return None
        if not contacts:
            return None
        target = (contacts[0].uri.host, _port(contacts[0].uri))
        for binding in self.registrar.bindings(request.from_address.uri.user or ""):
            if binding.source != source:
                continue
            try:
                registered = URI.parse(binding.contact)
            except ValueError:
                continue
            if (registered.host, _port(registered)) == target:
                return target
        return None

    def _on_cancel(self, key: TransactionKey, request: Request) -> list[Effect]:
        sid = self._server_invites.get(self.layer.invite_key_for_cancel(key))
        s = self.sessions.get(sid) if sid else None
        if not isinstance(s, IncomingSession):
            return self._reply(key, request, 481)
        effects = self._reply(key, request, 200, tag=s.local_tag)
        if s.final or s.ended:
            return effects
        s.final = True
        effects += self._respond(s, 487, None, None)
        return effects + self._end(s, events.Cancelled())

    def _on_ack(self, request: Request) -> list[Effect]:
        dialog_id = DialogId(request.call_id, to_tag(request) or "", from_tag(request) or "")
        sid = self._dialogs.get(dialog_id)
        s = self.sessions.get(sid) if sid else None
        if s is None:
            return []
        if not isinstance(s, IncomingSession) or request.cseq.sequence != s.invite.cseq.sequence:
            return self._on_reinvite_ack(s, request)
        if s.confirmed:
            return []
        s.confirmed = True
        effects = self._stop_uas_timers(s)
        if not s.ended:
            effects += self._st_restart(s)
            # Late offer: our 2xx carried the offer and the ACK carries the answer.
            answer = request.body or None if not s.invite.body else None
            effects.append(SessionUpdate(s.id, events.Confirmed(answer)))
            effects += self._start_next_reinvite(s)
        return effects

    def _on_in_dialog(self, key: TransactionKey, request: Request) -> list[Effect]:
        dialog_id = DialogId(request.call_id, to_tag(request) or "", from_tag(request) or "")
        sid = self._dialogs.get(dialog_id)
        s = self.sessions.get(sid) if sid else None
        if s is None or s.dialog is None:
            return self._reply(key, request, 481, tag=dialog_id.local_tag)
        dialog = s.dialog
        tag = dialog.local_tag
        if not dialog.accept_remote_cseq(request.cseq):
            return self._reply(key, request, 500, tag=tag)
        method = request.method
        if method == "BYE":
            effects = self._reply(key, request, 200, tag=tag)
            if not s.ended:
                effects += self._end(s, events.Terminated("bye"))
            return effects
        if s.ended:
            return self._reply(key, request, 481, tag=tag)
        if method in IN_DIALOG_METHODS:
            return self._on_dialog_request(s, key, request)
        return self._reply(key, request, 405 if method in KNOWN_METHODS else 501, tag=tag)


def _port(uri: URI) -> int:
    return uri.port or (5061 if uri.scheme == "sips" else 5060)


def from_tag_of(address: Address) -> str:
    return address.parameters.get("tag") or ""
