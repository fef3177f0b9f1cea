"""The B2BUA: owns registrations and calls, pairs each client leg with a far leg.

A client call's far leg is a SIP dialog (toward the PBX or from a SIP caller) or,
for web-to-web calls, another client's call. Outgoing calls fork to every client
logged in with the dialed number; incoming SIP calls fork the same way. The first
answer wins and the others end with `notSelected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sipmessage import URI

from gateway.auth import AuthResult
from gateway.call import (
    CallState,
    Reason,
    allows,
    reason_from_sip,
    sip_for_reason,
)
from gateway.commands import (
    Accept,
    Answer,
    CallMessage,
    CallOffered,
    CallStatus,
    ClientEvent,
    Command,
    Dial,
    Hold,
    Ice,
    MediaAnswer,
    MediaOffer,
    Offer,
    Party,
    QueryStatus,
    Retrieve,
    SdpAnswer,
    Terminate,
    Transfer,
)
from gateway.config import Config, User
from gateway.directory import Directory
from gateway.push import Push
from gateway.records import CallRecordBuilder, RecordWriter
from rtc.bridge import MediaBridge
from rtc.ports import AudioPort
from rtc.rtpleg import RtpLeg
from rtc.rtpvideo import RtpVideo, VideoRtpLeg
from rtc.sdp import SdpError, SessionDescription
from rtc.sources import EchoPort, TonePort
from rtc.webrtcleg import IceServer, WebRtcLeg
from rtc.webrtcvideo import offer_has_video
from sip import events as sip_events
from sip.aio.useragent import InboundInvite, OutboundInvite, UserAgent
from sip.dtmf_relay import CONTENT_TYPE as DTMF_RELAY
from sip.dtmf_relay import DtmfRelay, parse_dtmf_relay
from sip.identity import asserted_identity_header
from sip.peer import Peer
from sip.registrar import Binding

logger = logging.getLogger(__name__)

# Duration= of the INFO dtmf-relay we send: the browser's RTCDTMFSender default tone
INFO_DTMF_MS = 100

# What the core tells a client's front end.
ClientSink = Callable[[ClientEvent], None]


def _discard(event: ClientEvent) -> None:
    """The sink of a detached registration: a restore re-sends the current state."""


async def _close_leg(bridge: MediaBridge | None, leg: WebRtcLeg | None) -> None:
    if bridge is not None:
        await bridge.close()
    if leg is not None:
        await leg.close()


# What may stand in a SIP user part we build from a dialed number.
_DIAL_STRING = re.compile(r"^\+?[0-9A-Za-z*#._-]{1,64}$")
IDENTIFIER = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# A header value that may be copied between legs: printable, single line, bounded.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{0,512}")
# Seconds between a client leg failing and the call ending for it (see _client_leg_failed).
LEG_FAILURE_GRACE = 2.0
# How long the end of a call waits for the browser leg's statistics for its record.
RECORD_STATS_TIMEOUT = 1.0
# The tone (rtc.tones.TONES) a caller hears for the reasons that have one, before
# `terminated` ([media] failure_tone_seconds).
FAILURE_TONES = {Reason.BUSY: "busy", Reason.CONGESTION: "congestion"}
CALL_WAITING = "call-waiting"


def _far_holds(session: SessionDescription) -> bool:
    """The far party's SDP puts its audio on hold: a=sendonly/inactive, or the RFC 2543
    way, c= 0.0.0.0 (or ::) whatever the direction, which RFC 3264 §8.4 says an answerer
    must still take as hold. SdpError without an active audio stream."""
    audio = session.audio()
    if session.media_direction(audio) in ("sendonly", "inactive"):
        return True
    address = session.media_connection(audio)
    try:
        return address is not None and ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False  # a host name: a real address


def new_identifier() -> str:
    # 128 bits, URL-safe: fits the json-v1 identifier alphabet.
    return secrets.token_urlsafe(16)


@dataclasses.dataclass(eq=False)
class Registration:
    """A logged-in client: its number, name and the calls it has."""

    identifier: str
    number: str
    display_name: str
    description: str
    sink: ClientSink
    # The authenticated user (None for anonymous and outgoing-only token logins).
    username: str | None = None
    # The JOSE nonce of the login token: a fresh token with it takes the registration over.
    token_nonce: str | None = None
    # Closes the connection currently attached (used when another one takes over).
    disconnect: Callable[[], None] | None = None
    # [pbx] per_user_registration: this login's REGISTER at the PBX.
    pbx_registration: Any = None
    calls: dict[str, ClientCall] = dataclasses.field(default_factory=dict)
    # False between a lost connection and its restore; `detached` ends the grace period
    # (None while a push token is stored: such a registration waits to be woken).
    attached: bool = True
    detached: asyncio.TimerHandle | None = None
    notification_token: str | None = None
    notification_url: str | None = None

    @property
    def party(self) -> Party:
        return Party(self.number, self.display_name)

    @property
    def outgoing_only(self) -> bool:
        return not self.number


@dataclasses.dataclass(eq=False)
class Junction:
    """Two SIP far legs the gateway bridges itself after the PBX refused the REFER of an
    attended transfer (DESIGN §3), or a phone-to-phone call; either side's BYE ends both,
    and so does [media] timeout without RTP on either leg (reason `media`)."""

    sessions: list[OutboundInvite | InboundInvite]
    rtps: list[RtpLeg]
    bridge: MediaBridge
    ended: bool = False
    # A phone-to-phone call's record (the calls of a refused transfer have their own).
    record: CallRecordBuilder | None = None
    # [media] timeout (Core._check_junction_media): the loop time silence counts from
    # (the join, or the first check after a hold ended), whether a leg was held at the
    # last check, and the next check.
    quiet_since: float = 0.0
    held: bool = False
    media_check: asyncio.TimerHandle | None = None
    # Per leg: its far party holds the RFC 2543 way (c= 0.0.0.0), which the leg's
    # negotiated direction does not show.
    far_held: list[bool] = dataclasses.field(default_factory=lambda: [False, False])


@dataclasses.dataclass(eq=False)
class SipIncoming:
    """An INVITE from a SIP peer, offered to one or more clients."""

    invite: InboundInvite
    rtp: RtpLeg | None = None
    rtp_answer: bytes = b""
    forks: list[ClientCall] = dataclasses.field(default_factory=list)
    winner: ClientCall | None = None
    ringing_sent: bool = False
    ended: bool = False
    timer: asyncio.TimerHandle | None = None
    junction: Junction | None = None  # set when a transfer handed this dialog to one
    # Registered phones of the called number ringing beside the web clients (forking);
    # the first answer among both wins.
    phones: list[SipBranch] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(eq=False)
class SipBranch:
    """One registered contact rung by a call forked to several devices of a number (SIP
    phones and/or web clients); the first to answer wins, the other branches get CANCEL."""

    target: str  # the registered contact (Request-URI)
    flow: Peer  # where its REGISTER came from
    # Who gets the dialog's events once the branch won (as ClientCall.sip_owner).
    owner: list[ClientCall | Junction | None]
    invite: OutboundInvite | None = None
    rtp: RtpLeg | None = None
    early_sdp: bytes | None = None
    pending: bool = True  # still ringing: its events go to _branch_event


@dataclasses.dataclass(eq=False)
class PhoneCall:
    """A SIP call to a number only registered phones have (no web client logged in):
    the gateway rings every contact and joins the first to answer to the caller
    (a Junction from then on: media bridged, MESSAGE relayed, either BYE ends both)."""

    invite: InboundInvite
    rtp: RtpLeg | None = None
    answer: bytes = b""
    branches: list[SipBranch] = dataclasses.field(default_factory=list)
    code: int = 0  # the best failure status of the branches so far
    ringing_sent: bool = False
    ended: bool = False
    record: CallRecordBuilder | None = None


@dataclasses.dataclass(eq=False)
class ClientCall:
    """One call as a client sees it."""

    call_id: str
    reg: Registration
    outgoing: bool
    remote: Party
    state: CallState
    webrtc: WebRtcLeg | None = None
    # The gateway offered the client leg and waits for the client's media/answer.
    offer_pending: bool = False
    # The client's re-offer is being answered.
    reoffer_pending: bool = False
    bridge: MediaBridge | None = None
    # outgoing to SIP
    invite: OutboundInvite | None = None
    rtp: RtpLeg | None = None
    early_sdp: bytes | None = None
    alerted: bool = False
    answered: bool = False
    # 180 from SIP or a callee's accept: the caller should hear generated ringback.
    ringback_wanted: bool = False
    ringback_on: bool = False
    far_ended: bool = False
    # Hold (json-v1 §9): this client held the call / the far party holds it.
    local_hold: bool = False
    remote_hold: bool = False
    hold_pending: bool = False
    # outgoing to web users: the offered callee calls
    forks: list[ClientCall] = dataclasses.field(default_factory=list)
    winner: ClientCall | None = None
    no_answer: asyncio.TimerHandle | None = None
    # a test number answered by the gateway itself
    local: EchoPort | TonePort | None = None
    # incoming: where it comes from
    caller: ClientCall | None = None
    sip_in: SipIncoming | None = None
    record: CallRecordBuilder | None = None
    # Outbound SIP: who gets the dialog's events (see _invite_sip) and where it was sent.
    sip_owner: list[ClientCall | Junction | None] | None = None
    # A REFER from the far end asked for this call's current far end: report its progress.
    referred_by: OutboundInvite | InboundInvite | None = None
    sip_target: str = ""
    transfer_pending: bool = False
    # [sip] pass_headers: X- headers carried from the caller's side to the other leg.
    x_headers: tuple[tuple[str, str], ...] = ()
    # Outgoing call forked to registered SIP contacts: the branches still ringing and the
    # best final status of those that failed (RFC 3261 §16.7 style).
    branches: list[SipBranch] = dataclasses.field(default_factory=list)
    branch_code: int = 0
    to_phone: bool = False  # the SIP far end is a contact of our registrar
    # [media] failure_tone_seconds: the far end refused with this reason (busy,
    # congestion) at `failed_at` (wall clock), and the client hears its tone, state
    # `terminating`, until `tone_end` ends the call (_far_failed).
    failure: Reason | None = None
    failed_at: float = 0.0
    tone_end: asyncio.TimerHandle | None = None


class Core:
    def __init__(self, config: Config, ua: UserAgent | None) -> None:
        self.config = config
        self.ua = ua
        self.directory = Directory.from_config(config)
        self.records: RecordWriter | None = (
            RecordWriter.open(config.records.path) if config.records.enabled else None
        )
        self.push = Push.create(config.push)
        # Peers whose P-Asserted-Identity is believed (the SIP trusted networks).
        self.trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        # False while OPTIONS qualify says the PBX is down ([pbx] qualify_interval).
        self.pbx_up = True
        self._ice_servers = tuple(
            IceServer(s.urls, s.username, s.credential) for s in config.media.ice_servers
        )
        self.registrations: dict[str, Registration] = {}
        self._by_number: dict[str, list[Registration]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- registrations ---------------------------------------------------------------

    async def register(
        self,
        number: str,
        display_name: str,
        description: str,
        sink: ClientSink,
        auth: AuthResult | None = None,
    ) -> Registration | Reason:
        """Log a client in with the number rules of json-v1 §7, or say why not. Directory
        lookups use the async variants: an LDAP directory must not block the loop."""
        username = auth.username if auth is not None else None
        assignment = self.config.directory.number_assignment
        if username is not None:
            user = await self.directory.aby_username(username)
            if assignment == "directory":
                if user is None or not user.number:
                    return Reason.DIAL_STRING
                number = user.number
            elif not number:
                return Reason.DIAL_STRING
            elif user is None or user.number != number:
                # Authenticated as one user, claiming another's number.
                return Reason.PERMISSION
        elif auth is not None and auth.method == "token":
            # A token naming nobody: outgoing calls only, never a number.
            if number:
                return Reason.PERMISSION
            user = None
        else:
            if not number:
                return Reason.DIAL_STRING
            user = await self.directory.aby_number(number)
            if user is None:
                return Reason.PERMISSION
        limit = self.config.calls.max_clients_per_number
        same_user = sum(
            1 for r in self.registrations.values() if username and r.username == username
        )
        if (number and len(self._by_number.get(number, ())) >= limit) or same_user >= limit:
            logger.info("login as %s refused: %d clients already", number or username, limit)
            return Reason.CONGESTION
        reg = Registration(
            identifier=new_identifier(),
            number=number,
            display_name=display_name or (user.display_name if user else ""),
            description=description[:256],
            sink=sink,
            username=username,
            token_nonce=auth.token_nonce if auth is not None else None,
        )
        self.registrations[reg.identifier] = reg
        if reg.number:
            self._by_number.setdefault(reg.number, []).append(reg)
            self._register_at_pbx(reg, user)
        logger.info(
            "registered %s (%s) as %s",
            reg.number or "<outgoing only>",
            reg.display_name,
            reg.identifier,
        )
        return reg

    def _register_at_pbx(self, reg: Registration, user: User | None) -> None:
        """[pbx] per_user_registration: the login's number is registered at the PBX with
        the user's own credentials, so the PBX routes its calls here."""
        pbx = self.config.pbx
        if not pbx.per_user_registration or self.ua is None or pbx.uri is None:
            return
        if user is None or not user.password:
            logger.warning(
                "%s is not registered at the PBX ([pbx] per_user_registration): %s",
                reg.number,
                "no directory user"
                if user is None
                else "only HA1 values are stored for it"
                if user.ha1_only
                else "the directory has no password for it",
            )
            return
        host = URI.parse(pbx.uri)
        aor = str(URI(scheme="sip", host=host.host, port=host.port, user=reg.number))
        number = reg.number

        def on_state(update: Any) -> None:
            logger.info("PBX registration of %s: %s %s", number, update.state, update.code or "")

        try:
            reg.pbx_registration = self.ua.register(
                aor, pbx.uri, (reg.number, user.password), pbx.register_expires, on_state
            )
        except ValueError as exc:
            logger.error("cannot register %s at the PBX: %s", reg.number, exc)

    def _passable(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """The headers [sip] pass_headers lets through, with safe values (printable, no
        CR/LF, bounded), at most 32."""
        allowed = {name.lower(): name for name in self.config.sip.pass_headers}
        out = [
            (allowed[name.lower()], value)
            for name, value in headers
            if name.lower() in allowed and _HEADER_VALUE.fullmatch(value)
        ]
        return tuple(out[:32])

    def _trusted_source(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)

    def set_pbx_up(self, up: bool) -> None:
        if up != self.pbx_up:
            logger.warning("PBX %s is %s", self.config.pbx.uri, "up" if up else "DOWN")
        self.pbx_up = up

    def takeover(self, auth: AuthResult, sink: ClientSink) -> tuple[Registration, bool] | None:
        """Token refresh (json-v1 §2): a connection whose token carries the nonce of a
        registration's token, for the same user, takes that registration over. The flag
        says whether the registration had lost its connection (its calls need new legs)."""
        if auth.token_nonce is None:
            return None
        for reg in self.registrations.values():
            if reg.token_nonce == auth.token_nonce and reg.username == auth.username:
                break
        else:
            return None
        old = reg.disconnect
        reg.disconnect = None
        was_detached = not reg.attached
        if was_detached:
            self.restore(reg.identifier, sink, auth)
        else:
            reg.sink = sink
            if old is not None:
                old()
        logger.info("registration %s taken over by a refreshed token", reg.identifier)
        return reg, was_detached

    def unregister(self, reg: Registration, reason: Reason = Reason.USER_TERMINATED) -> None:
        """End every call of the registration and forget it."""
        if self.registrations.pop(reg.identifier, None) is None:
            return
        if reg.detached is not None:
            reg.detached.cancel()
            reg.detached = None
        peers = self._by_number.get(reg.number, [])
        if reg in peers:
            peers.remove(reg)
        if not peers:
            self._by_number.pop(reg.number, None)
        reg.disconnect = None
        if reg.pbx_registration is not None:
            reg.pbx_registration.stop()
            reg.pbx_registration = None
        for call in list(reg.calls.values()):
            self._end(call, reason)
        logger.info("unregistered %s (%s)", reg.number, reg.identifier)

    def logged_in(self, number: str) -> list[Registration]:
        """Registrations with a connection that can be offered a call now."""
        return [r for r in self._by_number.get(number, ()) if r.attached]

    def sleeping(self, number: str) -> list[Registration]:
        """Registrations without a connection that a push notification can wake."""
        if self.push is None:
            return []
        return [
            r for r in self._by_number.get(number, ()) if not r.attached and r.notification_token
        ]

    def set_push_token(self, reg: Registration, token: str | None, url: str | None) -> None:
        reg.notification_token = token or None
        reg.notification_url = url or None

    def _wake(self, reg: Registration, call: ClientCall) -> None:
        """Offer a call to a sleeping registration: send the push wake-up (json-v1 §8)."""
        assert self.push is not None and reg.notification_token is not None
        wake = self.push.wake(
            identifier=reg.identifier,
            call_identifier=call.call_id,
            notification_token=reg.notification_token,
            caller=call.remote.dial_string,
            url=reg.notification_url,
        )

        async def send() -> None:
            result = await wake
            if not result.ok:
                logger.info(
                    "call %s: wake-up of %s failed: %s", call.call_id, reg.identifier, result.error
                )

        self._spawn(send())

    def wakeup(
        self, token: str, identifier: str, sink: ClientSink, auth: AuthResult | None = None
    ) -> Registration | None:
        """A connection woken by a push (?wakeupToken=&identifier=): attach it to the
        registration under a new identifier. None for an unknown, used or expired token."""
        if self.push is None or self.push.consume(token, identifier) is None:
            return None
        reg = self.restore(identifier, sink, auth)
        if reg is None:
            return None
        self.push.tokens.revoke(identifier=identifier)
        del self.registrations[reg.identifier]
        reg.identifier = new_identifier()
        self.registrations[reg.identifier] = reg
        return reg

    def detach(self, reg: Registration) -> None:
        """The client's connection is gone: keep the registration and its calls for the
        grace period (json-v1 §7). The far parties hear silence meanwhile."""
        if reg.identifier not in self.registrations or not reg.attached:
            return
        reg.sink = _discard
        reg.disconnect = None
        reg.attached = False
        if reg.notification_token is None or self.push is None:
            reg.detached = asyncio.get_running_loop().call_later(
                self.config.calls.restore_grace, self._grace_expired, reg
            )
        for call in list(reg.calls.values()):
            if call.state is CallState.TERMINATING:
                # Its failure tone: nobody hears the rest (the call keeps its reason).
                self._end(call, Reason.USER_TERMINATED)
            elif call.state in (CallState.OFFERED,) and not call.outgoing:
                # Nobody can answer an offer on a dead connection.
                self._end(call, Reason.NOT_RESPONDING)
            else:
                self._drop_client_leg(call)
        logger.info("registration %s detached; %d call(s) kept", reg.identifier, len(reg.calls))

    def _grace_expired(self, reg: Registration) -> None:
        logger.info("registration %s: restore grace period expired", reg.identifier)
        reg.detached = None
        self.unregister(reg, Reason.USER_TERMINATED)

    def restore(
        self, identifier: str, sink: ClientSink, auth: AuthResult | None = None
    ) -> Registration | None:
        """Attach a new connection to a detached registration; None when unknown or expired.
        The caller sends the register status first, then calls `resume_calls`."""
        reg = self.registrations.get(identifier)
        if reg is None or reg.attached:
            return None
        if reg.username is not None and (auth is None or auth.username != reg.username):
            # Identifiers are bound to their user (DESIGN §9).
            return None
        if reg.detached is not None:
            reg.detached.cancel()
            reg.detached = None
        reg.attached = True
        reg.sink = sink
        logger.info("registration %s restored with %d call(s)", identifier, len(reg.calls))
        return reg

    async def resume_calls(self, reg: Registration) -> None:
        """Tell a restored client about its calls and offer a new WebRTC leg for each."""
        for call in list(reg.calls.values()):
            if not call.outgoing and not call.answered:
                reg.sink(CallOffered(call.call_id, call.remote, reg.party, call.x_headers))
                if call.state is CallState.RINGING:
                    reg.sink(CallStatus(call.call_id, call.state, None, call.remote))
            else:
                reg.sink(CallStatus(call.call_id, call.state, None, call.remote))
        # Every call gets a new leg, not only connected ones: a call still alerting
        # needs one for ringback and for the moment it is answered.
        for call in list(reg.calls.values()):
            await self._offer_client_leg(call)

    # -- commands from clients ---------------------------------------------------------

    async def handle(self, reg: Registration, command: Command) -> None:
        if isinstance(command, Dial):
            await self._dial(reg, command)
            return
        call = reg.calls.get(command.call_id)
        if call is None:
            reg.sink(CallStatus(command.call_id, CallState.TERMINATED, Reason.ERROR))
            return
        if isinstance(command, QueryStatus):
            reg.sink(CallStatus(call.call_id, call.state, None, call.remote))
        elif isinstance(command, Terminate):
            self._client_terminate(call, command.reason)
        elif isinstance(command, Offer):
            await self._client_offer(call, command.sdp)
        elif isinstance(command, SdpAnswer):
            await self._client_answer_sdp(call, command.sdp)
        elif isinstance(command, Ice):
            await self._client_ice(call, command)
        elif isinstance(command, Accept):
            self._accept(call)
        elif isinstance(command, Answer):
            self._answer(call)
        elif isinstance(command, Hold):
            self._hold(call, True)
        elif isinstance(command, Retrieve):
            self._hold(call, False)
        elif isinstance(command, Transfer):
            await self._transfer(call, command)

    def _refuse(self, call: ClientCall, reason: Reason = Reason.ERROR) -> None:
        """A request the call's state forbids: report the unchanged state (json-v1 §9)."""
        call.reg.sink(CallStatus(call.call_id, call.state, reason, call.remote))

    async def _dial(self, reg: Registration, cmd: Dial) -> None:
        if not IDENTIFIER.match(cmd.call_id) or cmd.call_id in reg.calls:
            reg.sink(CallStatus(cmd.call_id, CallState.TERMINATED, Reason.ERROR))
            return
        if len(reg.calls) >= self.config.calls.max_calls_per_client:
            reg.sink(CallStatus(cmd.call_id, CallState.TERMINATED, Reason.CONGESTION))
            return
        call = ClientCall(cmd.call_id, reg, True, cmd.remote, CallState.DIALING)
        call.x_headers = self._passable(cmd.headers)
        self._start_record(call, "outgoing")
        reg.calls[call.call_id] = call
        if not _DIAL_STRING.match(cmd.remote.dial_string):
            self._end(call, Reason.DIAL_STRING)
        elif not await self.may_dial(reg, cmd.remote.dial_string):
            logger.info(
                "call %s: %s may not dial %s",
                call.call_id,
                reg.number or reg.username,
                cmd.remote.dial_string,
            )
            self._end(call, Reason.PERMISSION)

    async def may_dial(self, reg: Registration, number: str) -> bool:
        """The dial rules of the registration's user (or the global ones) allow `number`."""
        numbers = self.config.numbers
        if number in (numbers.echo, numbers.tone):
            return True
        user = (await self.directory.aby_username(reg.username) if reg.username else None) or (
            await self.directory.aby_number(reg.number) if reg.number else None
        )
        calls = self.config.calls
        allow = (
            user.dial_allow
            if user is not None and user.dial_allow is not None
            else (calls.dial_allow)
        )
        deny = (
            user.dial_deny if user is not None and user.dial_deny is not None else (calls.dial_deny)
        )
        if allow and not any(re.fullmatch(p, number) for p in allow):
            return False
        return not any(re.fullmatch(p, number) for p in deny)

    async def _client_offer(self, call: ClientCall, sdp: str) -> None:
        if not (call.outgoing and call.state is CallState.DIALING and call.webrtc is None):
            await self._client_reoffer(call, sdp)
            return
        leg = call.webrtc = self._new_client_leg(call)
        try:
            answer = await leg.accept_offer(sdp)
        except Exception as exc:  # aiortc raises several types on bad SDP
            logger.info("call %s: client offer refused: %s", call.call_id, exc)
            self._end(call, Reason.MEDIA)
            return
        if call.state is CallState.TERMINATED:
            return
        call.reg.sink(MediaAnswer(call.call_id, answer))
        await self._route(call)

    async def _client_reoffer(self, call: ClientCall, sdp: str) -> None:
        """
        The client renegotiates a connected call (json-v1 §10): to add video, or
        to restart ICE after its path broke (the leg answers with new
        credentials and checks again; the SIP side sees nothing of it). Refused,
        with the call unchanged, while our own offer to it is
        out (glare: ours wins, the client rolls back) or another is in progress.
        Video the client adds is offered on to the far end: a re-INVITE to a
        SIP phone, a re-offer to the other web client.
        """
        leg = call.webrtc
        busy = call.offer_pending or call.reoffer_pending
        if leg is None or busy or not allows(call.state, "renegotiate"):
            self._refuse(call)
            return
        had_video = leg.has_video
        call.reoffer_pending = True
        try:
            answer = await leg.accept_offer(sdp)
        except Exception as exc:
            # WebRtcLeg.check_offer's ValueError (e.g. a DTLS restart) or aiortc's
            logger.info("call %s: client re-offer refused: %s", call.call_id, exc)
            self._refuse(call, Reason.MEDIA)
            return
        finally:
            call.reoffer_pending = False
        if call.state is CallState.TERMINATED or call.webrtc is not leg:
            return
        call.reg.sink(MediaAnswer(call.call_id, answer))
        if leg.has_video and not had_video:
            await self._video_to_far_end(call)

    async def _video_to_far_end(self, call: ClientCall) -> None:
        """The client added video mid-call: offer it to the far end as well."""
        leg = call.webrtc
        assert leg is not None
        peer = self._web_peer(call)
        sip = self._sip_side(call)
        if peer is not None and peer.webrtc is not None:
            if peer.offer_pending or peer.reoffer_pending:
                logger.info("call %s: video not offered to the far client (busy)", call.call_id)
                return
            await self._reoffer_client(peer, leg.video_codec)
        elif sip is not None and isinstance(sip[1], VideoRtpLeg) and leg.video_codec:
            session, rtp = sip[0], sip[1]
            first = rtp.video is None  # never offered: withdrawn again if refused
            self._enable_sip_video(rtp, leg.video_codec.split("/")[-1])
            if rtp.video is None:
                return
            self._bridge_client_leg(call)  # links the video once the phone accepts it

            def done(code: int, answer: bytes | None) -> None:
                if answer is None or not 200 <= code < 300:
                    logger.info("call %s: the phone refused video: %d", call.call_id, code)
                    if first:
                        # e.g. 488 for the whole offer: later ones (hold) go without video
                        self._spawn(rtp.withdraw_video())
                    return
                try:
                    rtp.apply_answer(answer)
                except SdpError as exc:
                    logger.info("call %s: unusable answer adding video: %s", call.call_id, exc)

            session.reinvite(rtp.create_offer("sendonly" if call.local_hold else "sendrecv"), done)

    async def _reoffer_client(self, call: ClientCall, video_codec: str | None) -> None:
        """Our re-offer to a connected client, with video (narrowed to `video_codec`)."""
        leg = call.webrtc
        assert leg is not None
        try:
            offer = await leg.create_offer(video=True, video_codec=video_codec)
        except Exception:
            logger.exception("call %s: could not create a re-offer", call.call_id)
            return
        if call.state is CallState.TERMINATED or call.webrtc is not leg:
            return
        self._bridge_client_leg(call)
        call.offer_pending = True
        call.reg.sink(MediaOffer(call.call_id, offer))

    async def _client_answer_sdp(self, call: ClientCall, sdp: str) -> None:
        if not call.offer_pending or call.webrtc is None:
            self._refuse(call)
            return
        call.offer_pending = False
        try:
            await call.webrtc.accept_answer(sdp)
        except Exception as exc:
            logger.info("call %s: client answer refused: %s", call.call_id, exc)
            self._end(call, Reason.MEDIA)  # a media failure, not a decline
            return
        self._bridge_client_leg(call)  # video the answer accepted is linked

    async def _client_ice(self, call: ClientCall, cmd: Ice) -> None:
        if call.webrtc is None:
            self._refuse(call)
            return
        for c in cmd.candidates:
            try:
                await call.webrtc.add_ice_candidate(c.candidate, c.sdp_mid, c.sdp_mline_index)
            except Exception as exc:
                logger.info("call %s: bad ICE candidate ignored: %s", call.call_id, exc)

    def _client_terminate(self, call: ClientCall, reason: Reason) -> None:
        """Hang up, cancel or decline. On a call whose failure tone plays (`terminating`) it
        ends the tone at once, and the call keeps the reason it failed with (_end)."""
        if call.state is CallState.TERMINATED:
            return
        if not call.outgoing and call.state in (CallState.OFFERED, CallState.RINGING):
            # A decline: only `busy` and `rejected` are meaningful here.
            if reason not in (Reason.BUSY, Reason.REJECTED):
                reason = Reason.REJECTED
        self._end(call, reason)

    # -- routing an outgoing call ------------------------------------------------------

    async def _route(self, call: ClientCall) -> None:
        number = call.remote.dial_string
        numbers = self.config.numbers
        callees = self._web_callees(call)
        bindings = self.ua.registrar.bindings(number) if self.ua is not None else []
        if callees and call.record is not None:
            call.record.routed("web")
        if number in (numbers.echo, numbers.tone):
            self._answer_locally(call, EchoPort() if number == numbers.echo else TonePort())
        elif bindings and (callees or len(bindings) > 1):
            # Several devices: web clients and registered phones ring in parallel.
            if callees:
                self._offer_to_clients(call, callees)
            self._fork_to_contacts(call, bindings)
        elif callees:
            self._offer_to_clients(call, callees)
        elif bindings:
            # A SIP phone registered with the built-in registrar, reached through the
            # flow (connection or NAT binding) its REGISTER came on.
            binding = bindings[0]
            await self._invite_sip(
                call, binding.contact, None, headers=call.x_headers, flow=binding.source
            )
        elif self.config.pbx.uri and self.ua is not None:
            if not self.pbx_up:
                logger.info("call %s: the PBX does not answer OPTIONS", call.call_id)
                self._end(call, Reason.EQUIPMENT)
                return
            pbx = self.config.pbx
            assert pbx.uri is not None
            number = call.remote.dial_string
            target, *fallback = (
                str(dataclasses.replace(URI.parse(u), user=number))
                for u in (pbx.uri, *pbx.fallback_uris)
            )
            credentials = (pbx.username, pbx.password or "") if pbx.username else None
            identity = asserted_identity_header(
                call.reg.number or "anonymous", self.config.sip.host, call.reg.display_name
            )
            await self._invite_sip(
                call, target, credentials, tuple(fallback), (identity, *call.x_headers)
            )
        else:
            self._end(call, Reason.DIAL_STRING)

    def _web_callees(self, call: ClientCall) -> list[Registration]:
        """The web clients (logged in or asleep) an outgoing call's number rings."""
        number = call.remote.dial_string
        return [r for r in self.logged_in(number) + self.sleeping(number) if r is not call.reg]

    async def _invite_sip(
        self,
        call: ClientCall,
        target: str,
        credentials: tuple[str, str] | None,
        fallback: tuple[str, ...] = (),
        headers: tuple[tuple[str, str], ...] = (),
        flow: Peer | None = None,
    ) -> None:
        media = self.config.media
        # The dialog's events go to whichever call owns it now: a transfer can hand the
        # dialog to another client's call.
        owner: list[ClientCall | Junction | None] = [call]
        call.sip_owner = owner
        try:
            call.rtp = await self._open_rtp(
                media_timeout=media.timeout or None,
                on_timeout=lambda: self._far_media_timeout(owner[0]),
                on_dtmf=lambda digit: self._far_dtmf(owner[0], digit),
            )
        except OSError as exc:
            logger.error("call %s: no RTP port: %s", call.call_id, exc)
            self._end(call, Reason.CONGESTION)
            return
        web = call.webrtc
        if web is not None and web.video_codec is not None:
            # The browser sends video: offer the phone its codec (relayed, not transcoded).
            self._enable_sip_video(call.rtp, web.video_codec.split("/")[-1])
        if call.state is CallState.TERMINATED:
            await call.rtp.close()
            return
        assert self.ua is not None
        call.invite = self.ua.invite(
            target,
            # An outgoing-only login has no number to present.
            from_user=call.reg.number or "anonymous",
            from_display=call.reg.display_name,
            sdp=call.rtp.create_offer(),
            credentials=credentials,
            on_event=lambda ev: self._on_outbound_sip(owner[0], ev),
            fallback_targets=fallback,
            headers=headers,
            flow=flow,
        )
        call.sip_target = target
        call.to_phone = flow is not None
        call.invite.set_reoffer_handler(lambda offer: self._far_reoffer(owner[0], offer))
        if call.record is not None:
            call.record.sip(call_id=call.invite.call_id)
        logger.info("call %s: INVITE %s (Call-ID %s)", call.call_id, target, call.invite.call_id)

    def _fork_to_contacts(self, call: ClientCall, bindings: list[Binding]) -> None:
        """Ring every registered contact of the number, each through its flow. While
        several devices ring, the caller hears generated ringback (early media of a
        branch is not relayed: it could be cut off by another branch's answer)."""
        for binding in bindings:
            branch = SipBranch(binding.contact, binding.source, [None])
            call.branches.append(branch)
            self._spawn(self._start_branch(call, branch))

    async def _start_branch(self, call: ClientCall, branch: SipBranch) -> None:
        media = self.config.media
        owner = branch.owner
        try:
            branch.rtp = await self._open_rtp(
                media_timeout=media.timeout or None,
                on_timeout=lambda: self._far_media_timeout(owner[0]),
                on_dtmf=lambda digit: self._far_dtmf(owner[0], digit),
            )
        except OSError as exc:
            logger.error("call %s: no RTP port for a branch: %s", call.call_id, exc)
            self._branch_failed(call, branch, 503)
            return
        web = call.webrtc
        if web is not None and web.video_codec is not None:
            # As in _invite_sip: the browser's video codec is offered to every device.
            self._enable_sip_video(branch.rtp, web.video_codec.split("/")[-1])
        if not branch.pending:
            await branch.rtp.close()  # the call ended or another device answered meanwhile
            return
        assert self.ua is not None

        def on_event(ev: sip_events.SessionEvent) -> None:
            if branch.pending:
                self._branch_event(call, branch, ev)
            else:
                self._on_outbound_sip(owner[0], ev)

        branch.invite = self.ua.invite(
            branch.target,
            from_user=call.reg.number or "anonymous",
            from_display=call.reg.display_name,
            sdp=branch.rtp.create_offer(),
            on_event=on_event,
            headers=call.x_headers,
            flow=branch.flow,
        )
        branch.invite.set_reoffer_handler(lambda offer: self._far_reoffer(owner[0], offer))
        logger.info(
            "call %s: INVITE %s (fork, Call-ID %s)",
            call.call_id,
            branch.target,
            branch.invite.call_id,
        )
        self._single_branch(call)  # the others may have failed while it was set up

    def _branch_event(
        self, call: ClientCall, branch: SipBranch, ev: sip_events.SessionEvent
    ) -> None:
        """An event of a ringing branch of a forked call."""
        if isinstance(ev, sip_events.Provisional):
            if ev.sdp is not None and branch.early_sdp is None and branch.rtp is not None:
                try:
                    branch.rtp.apply_answer(ev.sdp)
                    branch.early_sdp = ev.sdp
                except SdpError as exc:
                    logger.info("call %s: unusable early SDP of a branch: %s", call.call_id, exc)
            call.alerted = True
            call.ringback_wanted = True  # the first 180/183 of any device starts ringback
            if call.state is CallState.DIALING:
                self._set_state(call, CallState.RINGING)
                self._bridge_client_leg(call)
            self._single_branch(call)
        elif isinstance(ev, sip_events.Answered):
            self._branch_answered(call, branch, ev)
        elif isinstance(ev, sip_events.Rejected | sip_events.Terminated):
            code = ev.code if isinstance(ev, sip_events.Rejected) else 500
            self._branch_failed(call, branch, code)

    def _branch_answered(
        self, call: ClientCall, branch: SipBranch, ev: sip_events.SessionEvent
    ) -> None:
        """The first device to answer wins: the other branches get CANCEL, the web
        clients offered the call end `notSelected`; the call goes on as a SIP call."""
        branch.pending = False
        if branch in call.branches:
            call.branches.remove(branch)
        self._drop_branches(call)
        if call.no_answer is not None:
            call.no_answer.cancel()
        for fork in list(call.forks):
            self._end(fork, Reason.NOT_SELECTED, release=False)
        call.forks = []
        self._adopt_branch(call, branch)
        self._on_outbound_sip(call, ev)

    def _adopt_branch(self, call: ClientCall, branch: SipBranch) -> None:
        """The branch becomes the call's SIP leg, as if its contact had been dialled alone."""
        assert branch.invite is not None
        branch.pending = False
        call.invite, call.rtp, call.early_sdp = branch.invite, branch.rtp, branch.early_sdp
        call.sip_owner, call.sip_target = branch.owner, branch.target
        call.to_phone = True
        branch.owner[0] = call
        if call.record is not None:
            call.record.sip(call_id=branch.invite.call_id)

    def _single_branch(self, call: ClientCall) -> None:
        """Only one device is left ringing (the others refused, no web client is offered
        the call): it becomes the call's SIP leg, so its early media (183) is relayed
        instead of the generated ringback."""
        if (
            len(call.branches) != 1
            or call.forks
            or call.winner is not None
            or call.invite is not None
            or call.state is CallState.TERMINATED
            or call.branches[0].invite is None
        ):
            return
        branch = call.branches.pop()
        self._adopt_branch(call, branch)
        if call.early_sdp is not None:
            self._bridge_client_leg(call)

    def _branch_failed(self, call: ClientCall, branch: SipBranch, code: int) -> None:
        """A device refused or could not be reached; the call fails once nobody is left."""
        self._drop_branch(branch)
        if branch not in call.branches:
            return
        call.branches.remove(branch)
        old = call.branch_code
        if not old or (code >= 600 > old) or (old < 600 and code == 486):
            call.branch_code = code
        if (
            call.state is not CallState.TERMINATED
            and not call.branches
            and not call.forks
            and call.winner is None
            and call.invite is None
        ):
            call.far_ended = True
            self._far_failed(call, self._far_failure(call, call.branch_code))
        else:
            self._single_branch(call)

    @staticmethod
    def _far_failure(call: ClientCall, code: int) -> Reason:
        """The client's reason for a failed SIP far end. A registered phone that could
        not be reached (its connection gone: 503; no answer to the INVITE: 408; 480) is
        `notResponding`, not congestion at a PBX."""
        if (call.to_phone or call.branch_code) and code in (408, 480, 503):
            return Reason.NOT_RESPONDING
        return reason_from_sip(code, call.alerted)

    def _far_failed(self, call: ClientCall, reason: Reason, *, release: bool = True) -> None:
        """The far end of an outgoing call refused it (a SIP failure response, every device
        of a fork, every web user it rang). With [media] failure_tone_seconds and a reason
        that has a tone (busy, congestion), the client first hears that tone, as a phone
        does on the telephone network, in state `terminating` (json-v1 §5: clearing in
        progress, `terminated` follows). The rest of the call ends now: the SIP side is
        finished (the transaction layer ACKed the response), its RTP port released, a
        transferor told; only the client's `terminated`, its leg and the record wait."""
        if call.state is CallState.TERMINATING:
            return  # it failed already: its tone plays
        seconds = self.config.media.failure_tone_seconds
        tone = FAILURE_TONES.get(reason)
        leg = call.webrtc
        if (
            not seconds
            or tone is None
            or not call.outgoing
            or call.state is CallState.TERMINATED
            or leg is None
            or not call.reg.attached
            # A leg that can no longer carry it. One still connecting (a refusal quicker
            # than ICE and DTLS) carries the rest of the tone from when its media is up.
            or leg.connection_state in ("failed", "closed")
        ):
            self._end(call, reason, release=release)
            return
        previous = call.state
        call.failure, call.failed_at = reason, time.time()
        if call.no_answer is not None:
            call.no_answer.cancel()
        if call.referred_by is not None:
            self._refer_progress(call, *sip_for_reason(reason))
        if release:
            self._release_far(call, previous, reason)
        self._note_far_media(call)
        rtp, call.rtp = call.rtp, None
        if rtp is not None:
            self._spawn(rtp.close())
        self._set_state(call, CallState.TERMINATING)
        if call.bridge is None or call.bridge.client is not leg:
            call.bridge = MediaBridge(leg)
        call.bridge.tone(tone, self.config.media.ringback)
        call.ringback_on = False
        call.tone_end = asyncio.get_running_loop().call_later(seconds, self._end, call, reason)
        logger.info("call %s failed: %s; %s tone for %g s", call.call_id, reason, tone, seconds)

    def _drop_branch(self, branch: SipBranch) -> None:
        if not branch.pending:
            return
        branch.pending = False  # later events of its dialog go nowhere (owner is None)
        if branch.invite is not None:
            branch.invite.cancel()  # CANCEL (or BYE should its 2xx cross the CANCEL)
        if branch.rtp is not None:
            self._spawn(branch.rtp.close())

    def _drop_branches(self, call: ClientCall) -> None:
        branches, call.branches = call.branches, []
        for branch in branches:
            self._drop_branch(branch)

    def _answer_locally(self, call: ClientCall, port: EchoPort | TonePort) -> None:
        call.local = port
        call.answered = True
        self._set_state(call, CallState.ACTIVE)
        self._bridge_client_leg(call)

    def _on_outbound_sip(
        self, call: ClientCall | Junction | None, ev: sip_events.SessionEvent
    ) -> None:
        if isinstance(call, Junction):
            self._junction_event(call, ev)
            return
        if call is None or call.state in (CallState.TERMINATED, CallState.TERMINATING):
            # None: a dialog the call has left behind (transferred away by a REFER);
            # terminating: the far end failed already (_far_failed).
            return
        if isinstance(ev, sip_events.Referred):
            self._spawn(self._referred(call, ev))
            return
        if isinstance(ev, sip_events.Provisional):
            call.alerted = True
            if ev.sdp is not None and call.early_sdp is None:
                if not self._apply_far_sdp(call, ev.sdp):
                    return
                call.early_sdp = ev.sdp
            elif ev.code == 180:
                call.ringback_wanted = True
            self._set_state(call, CallState.RINGING)
            self._bridge_client_leg(call)
        elif isinstance(ev, sip_events.Answered):
            if ev.sdp is not None and ev.sdp != call.early_sdp:
                if not self._apply_far_sdp(call, ev.sdp):
                    return
            elif ev.sdp is None and call.early_sdp is None:
                logger.info("call %s: 2xx without SDP", call.call_id)
                self._end(call, Reason.MEDIA)
                return
            call.answered = True
            if call.rtp is not None:
                call.rtp.restart_media_timeout()  # the ring does not count
            if call.record is not None:
                call.record.sip(code=200)
            self._set_state(call, CallState.ACTIVE)
            self._bridge_client_leg(call)
        elif isinstance(ev, sip_events.Rejected):
            call.far_ended = True
            if call.record is not None:
                call.record.sip(code=ev.code)
            self._far_failed(call, self._far_failure(call, ev.code))
        elif isinstance(ev, sip_events.Terminated):
            call.far_ended = True
            self._end(call, Reason.SUCCESS if ev.reason == "bye" else Reason.ERROR)
        elif isinstance(ev, sip_events.InfoReceived):
            self._far_info(call, ev)
        elif isinstance(ev, sip_events.MessageReceived):
            self._far_message(call, ev)
        elif isinstance(ev, sip_events.RemoteAnswer):
            self._far_late_answer(call, ev.sdp)

    def _apply_far_sdp(self, call: ClientCall, sdp: bytes) -> bool:
        assert call.rtp is not None
        try:
            call.rtp.apply_answer(sdp)
        except SdpError as exc:
            logger.info("call %s: unusable SDP from the far end: %s", call.call_id, exc)
            self._end(call, Reason.MEDIA)
            return False
        return True

    # -- web-to-web --------------------------------------------------------------------

    def _offer_to_clients(self, caller: ClientCall, callees: list[Registration]) -> None:
        for reg in callees:
            fork = ClientCall(
                new_identifier(), reg, False, caller.reg.party, CallState.OFFERED, caller=caller
            )
            fork.x_headers = caller.x_headers
            self._start_record(fork, "web")
            reg.calls[fork.call_id] = fork
            caller.forks.append(fork)
            if reg.attached:
                self._spawn(self._offer_client(fork))
            else:
                self._wake(reg, fork)
        caller.no_answer = asyncio.get_running_loop().call_later(
            self.config.calls.no_answer_timeout, self._no_answer_web, caller
        )

    def _no_answer_web(self, caller: ClientCall) -> None:
        for fork in list(caller.forks):
            self._end(fork, Reason.NOT_RESPONDING, release=False)
        self._end(caller, Reason.NOT_RESPONDING)

    async def _offer_client(self, call: ClientCall) -> None:
        """Offer an incoming call to one client: signaling/start, then our media/offer."""
        call.reg.sink(CallOffered(call.call_id, call.remote, call.reg.party, call.x_headers))
        self._sync_call_waiting(call.reg, call)
        await self._offer_client_leg(call)

    async def _offer_client_leg(self, call: ClientCall) -> None:
        """A new WebRTC leg offered by the gateway, bridged to whatever the call has."""
        leg = call.webrtc = self._new_client_leg(call)
        try:
            # Only the SIP phone's video codec, if any: its video is relayed, not transcoded.
            offer = await leg.create_offer(
                video=self._peer_has_video(call), video_codec=self._sip_in_video_codec(call)
            )
        except Exception:
            logger.exception("call %s: could not create an offer", call.call_id)
            self._end(call, Reason.MEDIA)
            return
        if call.state is CallState.TERMINATED or call.webrtc is not leg:
            await leg.close()
            return
        self._bridge_client_leg(call)
        call.offer_pending = True
        call.reg.sink(MediaOffer(call.call_id, offer))

    async def _open_rtp(self, **supervision: Any) -> RtpLeg:
        """An RTP leg toward SIP with the configured address, port range, codecs and SRTP;
        `supervision`: media_timeout, on_timeout, on_dtmf."""
        media = self.config.media
        return await VideoRtpLeg.open(
            media.rtp_host,
            media.rtp_port_min,
            media.rtp_port_max,
            advertised_address=media.public_address,
            codecs=media.codecs,
            srtp=media.srtp,
            jitter_min=media.jitter_min_ms / 1000,
            jitter_max=media.jitter_max_ms / 1000,
            **supervision,
        )

    def _new_client_leg(self, call: ClientCall) -> WebRtcLeg:
        leg = WebRtcLeg(
            on_failed=lambda: self._client_leg_failed(call, leg),
            on_dtmf=lambda digit: self._client_dtmf(call, digit),
            ice_servers=self._ice_servers,
            opus_bit_rate=self.config.media.opus_bit_rate,
            opus_complexity=self.config.media.opus_complexity,
            playback_rate=self._sip_audio_rate(call),
            ice_restart_timeout=self.config.media.ice_restart_timeout,
        )
        return leg

    def _sip_audio_rate(self, call: ClientCall) -> int | None:
        """
        The sample rate of the SIP leg a new client leg will be bridged to, when
        it is known to be G.711's or G.722's: the browser's Opus need not carry
        more (WebRtcLeg.playback_rate). None for calls to web users, to the echo
        and tone numbers, and where the SIP side may choose Opus.
        """
        if call.sip_in is not None:
            rtp = call.sip_in.rtp
            return rtp.sample_rate if rtp is not None and rtp.codec is not None else None
        if not call.outgoing:
            return None  # a web user's call to this one
        if call.remote.dial_string in (
            self.config.numbers.echo,
            self.config.numbers.tone,
        ) or self._web_callees(call):
            return None
        codecs = self.config.media.codecs
        if "OPUS" in codecs:
            return None
        return 16000 if "G722" in codecs else 8000

    def _enable_sip_video(self, rtp: RtpLeg, *codecs: str) -> None:
        """Video toward a SIP phone on this RTP leg: m=video in its offers and answers."""
        if isinstance(rtp, VideoRtpLeg):
            try:
                rtp.enable_video(
                    codecs or ("VP8", "H264"), bitrate_kbps=self.config.media.video_bit_rate
                )
            except (OSError, ValueError) as exc:
                logger.warning("no video toward SIP: %s", exc)

    @staticmethod
    def _sip_in_video_codec(call: ClientCall) -> str | None:
        """The video codec negotiated with the call's SIP side (caller or callee), if any."""
        sip_rtp = call.sip_in.rtp if call.sip_in is not None else call.rtp
        if isinstance(sip_rtp, VideoRtpLeg) and sip_rtp.video is not None:
            return sip_rtp.video.video_codec
        return None

    def _peer_has_video(self, call: ClientCall) -> bool:
        """Whether the other web user of this call sends video (then we offer it too),
        or the SIP caller's video was negotiated."""
        if self._sip_in_video_codec(call) is not None:
            return True
        peer = self._web_peer(call) or call.caller
        return peer is not None and peer.webrtc is not None and peer.webrtc.has_video

    def _client_leg_failed(self, call: ClientCall, leg: WebRtcLeg) -> None:
        # A page reload closes the peer connection just before its WebSocket, so a
        # failed leg ends the call only if the connection outlives it (not a reload)
        # and no restore has replaced it meanwhile.
        def decide() -> None:
            if call.webrtc is leg and call.reg.attached:
                self._end(call, Reason.MEDIA)

        asyncio.get_running_loop().call_later(LEG_FAILURE_GRACE, decide)

    def _bridge_client_leg(self, call: ClientCall) -> None:
        """Connect the client leg to the call's far audio, or to ringback while alerting.

        Called on every state change and when a restore brings a new client leg, so
        it works out what the client should hear from the call as it stands.
        """
        leg = call.webrtc
        if leg is None or call.state is CallState.TERMINATING:
            return  # terminating: the failure tone has the leg (_far_failed)
        if call.caller is not None:
            # Web-to-web: the caller's bridge carries both directions.
            if call.caller.winner is call:
                self._bridge_client_leg(call.caller)
            return
        far = self._far_port(call)
        ringback = call.ringback_wanted and call.state is CallState.RINGING
        if far is None and not ringback and call.bridge is None:
            return
        if call.bridge is None or call.bridge.client is not leg:
            call.bridge = MediaBridge(leg)
            call.ringback_on = False
        if far is not None and not self._on_hold(call):
            call.bridge.connect(far)
            if isinstance(far, WebRtcLeg):
                # Web-to-web: video (when both legs negotiated it) follows the audio.
                call.bridge.connect_video(leg, far)
            elif isinstance(far, VideoRtpLeg) and far.video is not None:
                # A SIP video phone: its video and the browser's, relayed as they are.
                call.bridge.connect_video(leg, far.video)
            self._waiting_tones(call, call.bridge, far)
            call.ringback_on = False
        elif far is None and ringback:
            if not call.ringback_on:
                call.bridge.ringback(self.config.media.ringback)
                call.ringback_on = True
        else:
            # Held: neither side hears the other (the RTP leg sends silence meanwhile).
            call.bridge.disconnect()
            call.ringback_on = False

    def _waiting_tones(self, call: ClientCall, bridge: MediaBridge, far: AudioPort) -> None:
        """The call-waiting tone over what each client of a connected call hears while
        another call is offered to it ([media] call_waiting_tone), mixed in by the bridge
        (MediaBridge.overlay): toward the browser only, the far party hears nothing."""
        country = self.config.media.ringback
        bridge.overlay(bridge.client, CALL_WAITING if self._waiting(call) else None, country)
        peer = call.winner
        if peer is not None and far is peer.webrtc:
            # Web-to-web: this bridge carries what the other client hears too.
            bridge.overlay(far, CALL_WAITING if self._waiting(peer) else None, country)

    def _waiting(self, call: ClientCall) -> bool:
        """Whether another call is offered to the client of this connected call."""
        if not self.config.media.call_waiting_tone or not call.reg.attached:
            return False
        if call.state not in (CallState.ACTIVE, CallState.HOLDING):
            return False
        return any(
            other is not call
            and not other.outgoing
            and other.state in (CallState.OFFERED, CallState.RINGING)
            for other in call.reg.calls.values()
        )

    def _sync_call_waiting(self, reg: Registration, changed: ClientCall) -> None:
        """`changed`, an incoming call, was offered to the client or no longer is (answered,
        declined, cancelled, timed out): its connected calls start or stop hearing the
        call-waiting tone (_waiting_tones)."""
        if not self.config.media.call_waiting_tone:
            return
        for call in list(reg.calls.values()):
            if call is not changed and call.state in (CallState.ACTIVE, CallState.HOLDING):
                self._bridge_client_leg(call)

    @staticmethod
    def _on_hold(call: ClientCall) -> bool:
        """Whether a client of this call holds it (web-to-web: either client)."""
        if call.local_hold:
            return True
        return call.winner is not None and call.winner.local_hold

    # -- DTMF and media supervision -------------------------------------------------------

    def _client_dtmf(self, call: ClientCall, digit: str) -> None:
        """A digit from the browser's RTCDTMFSender toward SIP, as the peer's `dtmf` setting
        says ([pbx] dtmf or [sip] dtmf); "auto": RFC 4733 when the far end negotiated
        telephone-event, else SIP INFO application/dtmf-relay when its Allow lists INFO,
        else in-band tones. To the other client web-to-web."""
        if call.state not in (CallState.ACTIVE, CallState.RINGING) or self._on_hold(call):
            return
        sip = self._sip_side(call)
        if sip is None and call.rtp is not None and call.early_sdp is not None:
            sip_rtp: RtpLeg | None = call.rtp  # early media: IVRs listen before answering
        else:
            sip_rtp = sip[1] if sip is not None else None
        peer = call.winner or (call.caller if call.caller and call.caller.winner is call else None)
        mode = self._sip_dtmf_mode(call)
        try:
            if sip is not None and (
                mode == "info"
                or (mode == "auto" and sip[1].dtmf_mode == "inband" and sip[0].peer_allows("INFO"))
            ):
                sip[0].info(DTMF_RELAY, DtmfRelay(digit.upper(), INFO_DTMF_MS).encode())
            elif sip_rtp is not None:
                sip_rtp.send_dtmf(digit, inband=mode == "inband")
            elif peer is not None and peer.webrtc is not None:
                peer.webrtc.send_dtmf(digit)
        except (ValueError, RuntimeError) as exc:
            logger.info("call %s: DTMF %r not passed on: %s", call.call_id, digit, exc)

    def _sip_dtmf_mode(self, call: ClientCall) -> str:
        """The `dtmf` setting of the call's SIP peer: [sip] dtmf for a phone of our
        registrar (called through its registration, or calling us with digest
        credentials), [pbx] dtmf for everything else."""
        incoming = call.sip_in
        if call.to_phone:
            return self.config.sip.dtmf
        if incoming is not None:
            invite = incoming.invite
            phone = invite.authenticated_user is not None or (
                self.ua is not None
                and any(
                    b.source.address == invite.source
                    for b in self.ua.registrar.bindings(invite.caller_user or "")
                )
            )
            if phone:
                return self.config.sip.dtmf
        return self.config.pbx.dtmf

    def _far_dtmf(self, call: ClientCall | Junction | None, digit: str) -> None:
        """A digit from the SIP side (RFC 4733, in-band detection or INFO) to the browser."""
        if not isinstance(call, ClientCall) or call.webrtc is None:
            return
        if call.state is CallState.TERMINATED:
            return
        try:
            call.webrtc.send_dtmf(digit)
        except (ValueError, RuntimeError) as exc:
            logger.info("call %s: DTMF %r not passed to the client: %s", call.call_id, digit, exc)

    def _far_info(self, call: ClientCall, ev: sip_events.InfoReceived) -> None:
        """SIP INFO application/dtmf-relay ("Signal=5\\r\\nDuration=160") to the browser."""
        if ev.content_type.split(";")[0].strip().lower() != DTMF_RELAY:
            return
        relay = parse_dtmf_relay(ev.body)
        if relay is not None:
            self._far_dtmf(call, relay.signal)

    def _far_message(self, call: ClientCall, ev: sip_events.MessageReceived) -> None:
        """An in-dialog MESSAGE from the SIP far end (already answered 200 by the SIP
        layer: RFC 3428 pager mode) goes to the client as a call notification."""
        if call.state is CallState.TERMINATED:
            return
        call.reg.sink(CallMessage(call.call_id, ev.content_type, ev.body))

    def _far_media_timeout(self, call: ClientCall | Junction | None) -> None:
        if not isinstance(call, ClientCall):
            return
        if call.answered and not call.remote_hold and not call.local_hold:
            logger.info("call %s: no RTP for %.0f s", call.call_id, self.config.media.timeout)
            self._end(call, Reason.MEDIA)

    # -- transfer ------------------------------------------------------------------------

    async def _transfer(self, call: ClientCall, cmd: Transfer) -> None:
        """json-v1 §9 transfer. Success ends the client's call(s) `redirected`; a failure
        leaves them as they were and reports the unchanged state with a reason."""
        if not allows(call.state, "transfer") or call.transfer_pending:
            self._refuse(call)
            return
        if cmd.other_call_id is not None:
            other = call.reg.calls.get(cmd.other_call_id)
            if other is None or other is call or not allows(other.state, "transfer"):
                self._refuse(call)
                return
            self._attended_transfer(call, other)
        elif cmd.target is not None:
            await self._blind_transfer(call, cmd.target)

    @staticmethod
    def _web_peer(call: ClientCall) -> ClientCall | None:
        """The other client's call when this call's far end is a web user."""
        if call.winner is not None:
            return call.winner
        if call.caller is not None and call.caller.winner is call:
            return call.caller
        return None

    def _refer(
        self,
        call: ClientCall,
        target: str,
        replaces: str | None,
        done: Callable[[], None],
        fallback: Callable[[], Coroutine[Any, Any, None]] | None,
    ) -> None:
        """REFER the call's SIP far party to `target`; `done` on NOTIFY 2xx. If the far
        end refuses the REFER itself, `fallback` (the gateway does the transfer itself)."""
        sip = self._sip_side(call)
        assert sip is not None
        call.transfer_pending = True
        progressed = False

        def on_progress(code: int) -> None:
            nonlocal progressed
            if code < 200:
                progressed = True
                return
            call.transfer_pending = False
            if call.state is CallState.TERMINATED:
                return
            if code < 300:
                logger.info("call %s: transfer to %s accepted", call.call_id, target)
                done()
            elif not progressed and fallback is not None:
                logger.info("call %s: REFER refused (%d); bridging ourselves", call.call_id, code)
                self._spawn(fallback())
            else:
                logger.info("call %s: transfer to %s failed: %d", call.call_id, target, code)
                self._refuse(call, reason_from_sip(code, True))

        sip[0].refer(target, replaces=replaces, on_progress=on_progress)

    def _sip_uri_for(self, number: str) -> str:
        """Where a SIP party should send an INVITE for `number`: the PBX for numbers
        beyond the gateway, the gateway itself for its own users and test numbers."""
        local = (
            self.logged_in(number)
            or number in (self.config.numbers.echo, self.config.numbers.tone)
            or (self.ua is not None and self.ua.registrar.lookup(number))
        )
        if not local and self.config.pbx.uri:
            return str(dataclasses.replace(URI.parse(self.config.pbx.uri), user=number))
        assert self.ua is not None
        return f"sip:{number}@{self.config.sip.host}:{self.ua.port}"

    async def _blind_transfer(self, call: ClientCall, target: Party) -> None:
        if not _DIAL_STRING.match(target.dial_string):
            self._refuse(call, Reason.DIAL_STRING)
            return
        if not await self.may_dial(call.reg, target.dial_string):
            self._refuse(call, Reason.PERMISSION)
            return
        peer = self._web_peer(call)
        if self._sip_side(call) is not None:
            self._refer(
                call,
                self._sip_uri_for(target.dial_string),
                None,
                lambda: self._end(call, Reason.REDIRECTED),
                None,
            )
        elif peer is not None:
            # The other web user is handed a new call to the target, placed by us.
            self._detach_peer(peer, call)
            self._end(call, Reason.REDIRECTED, release=False)
            await self._redial(peer, target)
        else:
            self._refuse(call)

    async def _redial(self, call: ClientCall, target: Party) -> None:
        """Give a connected client call a new far end: `target`, routed like a dial."""
        call.remote = target
        call.outgoing = True
        # Internal only (never on the wire): the new far end's ringing/answer are
        # transitions again, which transfer progress reports hang on.
        call.state = CallState.DIALING
        call.answered = call.alerted = call.ringback_wanted = call.ringback_on = False
        call.early_sdp = None
        call.remote_hold = False
        call.far_ended = False
        if call.bridge is not None:
            call.bridge.disconnect()
        call.reg.sink(CallStatus(call.call_id, call.state, None, call.remote))
        await self._route(call)

    async def _referred(self, call: ClientCall, ev: sip_events.Referred) -> None:
        """The SIP far end transfers this client (incoming REFER, RFC 3515): the gateway
        calls the Refer-To target for the client and reports progress by NOTIFY."""
        sip = self._sip_side(call)
        if sip is None:
            return
        session = sip[0]
        try:
            number = URI.parse(ev.target.strip("<>").split("?")[0]).user or ""
        except ValueError:
            number = ""
        if not _DIAL_STRING.match(number) or not await self.may_dial(call.reg, number):
            session.notify_refer(403, "Forbidden")
            return
        logger.info("call %s: transferred by the far end to %s", call.call_id, number)
        # Leave the old dialog behind: its BYE must not end the client's call.
        if call.sip_owner is not None:
            call.sip_owner[0] = None
        old_rtp = call.rtp
        call.invite = call.rtp = None
        call.sip_owner = None
        if call.sip_in is not None:
            incoming, call.sip_in = call.sip_in, None
            incoming.winner, incoming.forks = None, []
            old_rtp = incoming.rtp
        call.referred_by = session
        if old_rtp is not None:
            self._spawn(old_rtp.close())
        await self._redial(call, Party(number))

    def _refer_progress(self, call: ClientCall, code: int, phrase: str) -> None:
        """NOTIFY the transferor how the call it asked for is doing; release its dialog
        once that call is answered or has failed."""
        session = call.referred_by
        if session is None:
            return
        session.notify_refer(code, phrase)
        if code >= 200:
            call.referred_by = None
            session.bye()

    def _attended_transfer(self, a: ClientCall, b: ClientCall) -> None:
        peer_a, peer_b = self._web_peer(a), self._web_peer(b)
        if peer_a is None and peer_b is None:
            sip_a, sip_b = self._sip_side(a), self._sip_side(b)
            if sip_a is None or sip_b is None:
                self._refuse(a)
                return
            # REFER A's far party to B's, replacing our dialog with B (RFC 3891).
            self._refer(
                a,
                self._remote_uri(b),
                sip_b[0].dialog_replaces,
                lambda: self._finish_transfer(a, b),
                lambda: self._junction(a, b),
            )
            return
        # A web user on one side: that user's call takes over the other far end.
        keeper, keeper_call, giver = (peer_a, a, b) if peer_a is not None else (peer_b, b, a)
        assert keeper is not None
        self._detach_peer(keeper, keeper_call)
        self._adopt_far(keeper, giver)
        self._end(a, Reason.REDIRECTED, release=False)
        self._end(b, Reason.REDIRECTED, release=False)

    async def _junction(self, a: ClientCall, b: ClientCall) -> None:
        """The PBX refused REFER: join the two SIP far legs in the gateway, so the
        attended transfer still completes (both client calls end `redirected`)."""
        sides = [self._sip_side(a), self._sip_side(b)]
        if a.state is CallState.TERMINATED or b.state is CallState.TERMINATED or None in sides:
            if a.state is not CallState.TERMINATED:
                self._refuse(a)
            return
        pairs = [side for side in sides if side is not None]
        junction = Junction([s for s, _ in pairs], [r for _, r in pairs], MediaBridge(pairs[0][1]))
        # A far party holding the RFC 2543 way still does once joined (its leg's
        # direction shows any other hold).
        junction.far_held = [a.remote_hold, b.remote_hold]
        for call, (session, rtp) in zip((a, b), pairs, strict=True):
            if call.bridge is not None:
                call.bridge.disconnect()  # the client's bridge must stop reading this leg
            if call.sip_owner is not None:
                call.sip_owner[0] = junction
                call.invite = call.rtp = None
                call.sip_owner = None
            elif call.sip_in is not None:
                incoming, call.sip_in = call.sip_in, None
                incoming.winner, incoming.forks, incoming.junction = None, [], junction
            session.set_reoffer_handler(functools.partial(self._junction_reoffer, junction, rtp))
            # MESSAGEs are relayed to the other side and answered with its response.
            session.defer_messages()
            session.set_event_handler(
                functools.partial(self._junction_session_event, junction, session)
            )
            if call.local_hold:
                session.reinvite(
                    rtp.create_offer("sendrecv"), functools.partial(self._junction_resumed, rtp)
                )
        junction.bridge.connect(pairs[1][1])
        self._link_junction_video(junction)
        self._supervise_junction(junction)
        logger.info("calls %s and %s joined in the gateway", a.call_id, b.call_id)
        self._end(a, Reason.REDIRECTED, release=False)
        self._end(b, Reason.REDIRECTED, release=False)

    @staticmethod
    def _junction_reoffer(junction: Junction, rtp: RtpLeg, offer: bytes | None) -> bytes | None:
        """A re-offer of one joined SIP party, answered by its own leg; a re-INVITE
        without SDP (None) gets our offer, answered in its ACK (_junction_late_answer)."""
        if offer is None:
            return rtp.create_offer("sendrecv")
        try:
            holds = _far_holds(SessionDescription.parse(offer))
            answer = rtp.create_answer(offer)
        except SdpError:
            return None
        junction.far_held[junction.rtps.index(rtp)] = holds
        return answer

    def _junction_late_answer(
        self, junction: Junction, session: OutboundInvite | InboundInvite, sdp: bytes
    ) -> None:
        """A joined SIP party's answer, in its ACK, to _junction_reoffer's offer."""
        if junction.ended or session not in junction.sessions:
            return
        index = junction.sessions.index(session)
        try:
            holds = _far_holds(SessionDescription.parse(sdp))
            junction.rtps[index].apply_answer(sdp)
        except SdpError as exc:
            logger.info(
                "joined calls: unusable answer in the ACK from Call-ID %s: %s", session.call_id, exc
            )
            self._end_junction(junction, Reason.MEDIA)
            return
        junction.far_held[index] = holds

    @staticmethod
    def _junction_resumed(rtp: RtpLeg, code: int, sdp: bytes | None) -> None:
        if sdp is not None and 200 <= code < 300:
            with contextlib.suppress(SdpError):
                rtp.apply_answer(sdp)

    def _junction_session_event(
        self,
        junction: Junction,
        session: OutboundInvite | InboundInvite,
        ev: sip_events.SessionEvent,
    ) -> None:
        if isinstance(ev, sip_events.MessageReceived):
            self._junction_message(junction, session, ev)
        elif isinstance(ev, sip_events.RemoteAnswer):
            self._junction_late_answer(junction, session, ev.sdp)
        else:
            self._junction_event(junction, ev)

    @staticmethod
    def _junction_message(
        junction: Junction, session: OutboundInvite | InboundInvite, ev: sip_events.MessageReceived
    ) -> None:
        """In-dialog MESSAGE (RFC 3428) from one joined SIP party: sent on to the other in
        its dialog, Content-Type and body unchanged; the sender gets the other side's
        final response (a timeout as 504, RFC 4320)."""
        if ev.op == 0:
            return  # answered by the SIP layer already (not deferred): nothing to relay to
        others = [s for s in junction.sessions if s is not session]
        if junction.ended or not others:
            session.respond_message(ev.op, 481)
            return
        if ev.content_type and not _HEADER_VALUE.fullmatch(ev.content_type):
            session.respond_message(ev.op, 415)
            return

        def relay(code: int) -> None:
            session.respond_message(ev.op, 504 if code == 408 else code)

        others[0].message(ev.content_type, ev.body, on_result=relay)

    def _junction_event(self, junction: Junction, ev: sip_events.SessionEvent) -> None:
        if junction.ended or not isinstance(
            ev, sip_events.Terminated | sip_events.Rejected | sip_events.Cancelled
        ):
            return
        self._end_junction(junction, Reason.SUCCESS)

    def _end_junction(self, junction: Junction, reason: Reason) -> None:
        """End both joined SIP legs (BYE) and close the record with `reason`."""
        junction.ended = True
        if junction.media_check is not None:
            junction.media_check.cancel()
            junction.media_check = None
        record = junction.record
        if record is not None:
            caller, callee = junction.rtps
            record.codecs(client=caller.codec, far=callee.codec)
            record.stats(
                client=dataclasses.asdict(caller.stats()), far=dataclasses.asdict(callee.stats())
            )
            record.ended(reason=str(reason))
        for session in junction.sessions:
            session.bye()  # a no-op on the side that already ended
        self._spawn(junction.bridge.close())
        for rtp in junction.rtps:
            self._spawn(rtp.close())
        logger.info("joined calls ended: %s", reason)

    def _supervise_junction(self, junction: Junction) -> None:
        """Start the [media] timeout of two joined SIP legs, counted from now (both are
        answered: a joined call exists only once its second leg answered).

        The core polls the legs' `last_received` and `direction` instead of using their
        own on_timeout: a SIP caller's leg is negotiated when its INVITE arrives, and
        RtpLeg counts from its negotiation. Armed from there, a ring longer than the
        timeout would end the call as it is answered, or fire before (unheeded) and then
        never again, as RtpLeg waits for a packet before firing once more."""
        timeout = self.config.media.timeout
        if not timeout:
            return
        loop = asyncio.get_running_loop()
        junction.quiet_since = loop.time()
        junction.media_check = loop.call_later(
            self._junction_check_interval(), self._check_junction_media, junction
        )

    def _junction_check_interval(self) -> float:
        # Fine enough that the call ends within a quarter of the timeout after it
        # expired (at most 1 s late), coarse enough to cost nothing beside the media.
        return min(1.0, self.config.media.timeout / 4)

    def _check_junction_media(self, junction: Junction) -> None:
        junction.media_check = None
        if junction.ended:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self.config.media.timeout
        if any(rtp.direction != "sendrecv" for rtp in junction.rtps) or any(junction.far_held):
            # Held by either side (re-INVITE a=sendonly/inactive or c= 0.0.0.0, answered
            # per leg) or one leg not negotiated: the whole call counts as on hold, as a
            # web call does for either party's hold (the other phone is not told of the
            # hold, but its user may well stop sending too).
            junction.held = True
        elif junction.held:
            # Resumed: silence counts from now, not from before the hold.
            junction.held = False
            junction.quiet_since = now
        else:
            for session, rtp in zip(junction.sessions, junction.rtps, strict=True):
                if now - max(junction.quiet_since, rtp.last_received or 0.0) >= timeout:
                    logger.info(
                        "joined calls (Call-ID %s): no RTP from Call-ID %s for %.0f s",
                        " and ".join(s.call_id for s in junction.sessions),
                        session.call_id,
                        timeout,
                    )
                    self._end_junction(junction, Reason.MEDIA)
                    return
        junction.media_check = loop.call_later(
            self._junction_check_interval(), self._check_junction_media, junction
        )

    def _finish_transfer(self, a: ClientCall, b: ClientCall) -> None:
        for call in (a, b):
            self._end(call, Reason.REDIRECTED)

    def _remote_uri(self, call: ClientCall) -> str:
        if call.sip_target:
            return call.sip_target
        incoming = call.sip_in
        assert incoming is not None
        host, port = incoming.invite.source
        return f"sip:{incoming.invite.caller_user}@{host}:{port}"

    def _detach_peer(self, peer: ClientCall, transferor: ClientCall) -> None:
        """Cut a web user's call loose from the transferring client's call."""
        if peer.caller is transferor:
            peer.caller = None
            transferor.winner = None
            transferor.forks = []
            if transferor.bridge is not None:
                transferor.bridge.disconnect()
        elif peer.winner is transferor:
            peer.winner = None
            transferor.caller = None
            if peer.bridge is not None:
                peer.bridge.disconnect()
        peer.remote_hold = False

    def _adopt_far(self, keeper: ClientCall, giver: ClientCall) -> None:
        """Move `giver`'s far end (SIP dialog, test number or web user) to `keeper`."""
        resume = giver.local_hold
        other = self._web_peer(giver)
        if other is not None:
            self._detach_peer(other, giver)
            keeper.winner, other.caller = other, keeper
            keeper.forks = [other]
            other.answered = True
            other.remote = keeper.reg.party
            other.remote_hold = keeper.local_hold
            self._set_state(other, self._steady_state(other))
            other.reg.sink(CallStatus(other.call_id, other.state, None, other.remote))
        elif giver.invite is not None and giver.sip_owner is not None:
            keeper.invite, keeper.rtp, keeper.early_sdp = giver.invite, giver.rtp, giver.early_sdp
            keeper.sip_owner, keeper.sip_target = giver.sip_owner, giver.sip_target
            keeper.to_phone = giver.to_phone
            keeper.sip_owner[0] = keeper
            giver.invite = giver.rtp = None
            giver.sip_owner = None
        elif giver.sip_in is not None:
            incoming = keeper.sip_in = giver.sip_in
            incoming.winner, incoming.forks = keeper, [keeper]
            giver.sip_in = None
        elif giver.local is not None:
            keeper.local, giver.local = giver.local, None
        keeper.answered = True
        keeper.remote = giver.remote
        keeper.remote_hold = giver.remote_hold and other is None
        self._set_state(keeper, self._steady_state(keeper))
        keeper.reg.sink(CallStatus(keeper.call_id, keeper.state, None, keeper.remote))
        self._bridge_client_leg(keeper)
        sip = self._sip_side(keeper)
        if resume and sip is not None:
            # The transferor had held this far end: take it off hold for its new partner.
            sip[0].reinvite(
                sip[1].create_offer("sendrecv"), lambda code, sdp: self._resumed(keeper, code, sdp)
            )

    def _resumed(self, call: ClientCall, code: int, sdp: bytes | None) -> None:
        sip = self._sip_side(call)
        if sip is not None and sdp is not None and 200 <= code < 300:
            try:
                sip[1].apply_answer(sdp)
            except SdpError as exc:
                logger.info("call %s: unusable answer after transfer: %s", call.call_id, exc)

    # -- hold ----------------------------------------------------------------------------

    @staticmethod
    def _sip_side(call: ClientCall) -> tuple[OutboundInvite | InboundInvite, RtpLeg] | None:
        """The SIP dialog and RTP leg of an answered call, if its far end is SIP."""
        if call.invite is not None and call.rtp is not None and call.answered:
            return call.invite, call.rtp
        incoming = call.sip_in
        if incoming is not None and incoming.winner is call and incoming.rtp is not None:
            return incoming.invite, incoming.rtp
        return None

    def _hold(self, call: ClientCall, hold: bool) -> None:
        """Client hold/retrieve: re-INVITE a=sendonly/sendrecv toward SIP, or just stop
        relaying for web-to-web and test-number calls."""
        if not allows(call.state, "hold" if hold else "retrieve") or call.hold_pending:
            self._refuse(call)
            return
        sip = self._sip_side(call)
        if sip is None:
            self._apply_hold(call, hold)
            return
        session, rtp = sip
        call.hold_pending = True
        offer = rtp.create_offer("sendonly" if hold else "sendrecv")
        session.reinvite(offer, lambda code, sdp: self._hold_result(call, hold, code, sdp))

    def _hold_result(self, call: ClientCall, hold: bool, code: int, sdp: bytes | None) -> None:
        call.hold_pending = False
        if call.state is CallState.TERMINATED:
            return
        sip = self._sip_side(call)
        if not 200 <= code < 300 or sip is None:
            logger.info(
                "call %s: %s refused by the far end: %d",
                call.call_id,
                "hold" if hold else "retrieve",
                code,
            )
            self._refuse(call, reason_from_sip(code, True) if code >= 300 else Reason.ERROR)
            return
        if sdp is not None:
            try:
                sip[1].apply_answer(sdp)
            except SdpError as exc:
                logger.info("call %s: unusable answer to the re-INVITE: %s", call.call_id, exc)
        self._apply_hold(call, hold)

    def _apply_hold(self, call: ClientCall, hold: bool) -> None:
        call.local_hold = hold
        self._set_state(call, self._steady_state(call))
        peer = self._web_peer(call)
        if peer is not None:
            # Web-to-web: the other client sees its far party hold.
            peer.remote_hold = hold
            self._set_state(peer, self._steady_state(peer))
        self._bridge_client_leg(call)

    @staticmethod
    def _steady_state(call: ClientCall) -> CallState:
        if call.local_hold:
            return CallState.HELD
        return CallState.HOLDING if call.remote_hold else CallState.ACTIVE

    def _far_reoffer(self, call: ClientCall | Junction | None, offer: bytes | None) -> bytes | None:
        """A re-INVITE/UPDATE from the SIP side: answer it and follow its hold state. A
        re-INVITE without SDP (`offer` None) gets our offer of what we want now; its
        answer comes in the ACK (_far_late_answer)."""
        if not isinstance(call, ClientCall):
            return None  # a junction answers through its own handler (_junction)
        sip = self._sip_side(call)
        if sip is None or call.state is CallState.TERMINATED:
            return None
        rtp = sip[1]
        if offer is None:
            return rtp.create_offer("sendonly" if call.local_hold else "sendrecv")
        leg = call.webrtc
        adds_video = False
        try:
            session = SessionDescription.parse(offer)
            holds = _far_holds(session)
            adds_video = (
                isinstance(rtp, VideoRtpLeg)
                and rtp.video is None
                and leg is not None
                and offer_has_video(offer.decode("utf-8", "replace"))
            )
            if adds_video:
                # The phone turns on video mid-call: accept it, then offer it to the client.
                self._enable_sip_video(rtp)
            answer = rtp.create_answer(offer, "sendonly" if call.local_hold else "sendrecv")
        except (SdpError, ValueError) as exc:
            logger.info("call %s: re-offer refused: %s", call.call_id, exc)
            if adds_video and isinstance(rtp, VideoRtpLeg):
                self._spawn(rtp.withdraw_video())  # refused (488): the session is unchanged
            return None
        self._follow_far_hold(call, rtp, holds)
        video = rtp.video if isinstance(rtp, VideoRtpLeg) else None
        if adds_video and video is not None and video.has_video and leg is not None:
            if call.offer_pending or call.reoffer_pending or leg.has_video:
                self._bridge_client_leg(call)  # the client's video, if any, is linked
            else:
                self._spawn(self._reoffer_client(call, video.video_codec))
        elif video is not None and leg is not None and leg.has_video:
            self._follow_far_video(call, leg, video)
        return answer

    def _follow_far_hold(self, call: ClientCall, rtp: RtpLeg, holds: bool) -> None:
        if call.remote_hold and not holds:
            # Silence counts from the resume: during a hold its direction did not show
            # (c= 0.0.0.0) the leg may have timed out unheeded, and would then wait for
            # a packet before timing out again.
            rtp.restart_media_timeout()
        call.remote_hold = holds
        self._set_state(call, self._steady_state(call))

    def _far_late_answer(self, call: ClientCall, sdp: bytes) -> None:
        """The SIP side's answer, in its ACK, to the offer _far_reoffer made for its
        re-INVITE without SDP: the leg takes it, the call follows its hold state."""
        sip = self._sip_side(call)
        if sip is None or call.state is CallState.TERMINATED:
            return
        rtp = sip[1]
        try:
            holds = _far_holds(SessionDescription.parse(sdp))
            rtp.apply_answer(sdp)
        except SdpError as exc:
            # An ACK cannot be refused and the exchange it ends failed: hang up, as RFC
            # 3261 §13.2.2.4 has a UAC do with an unusable answer in a 2xx.
            logger.info("call %s: unusable answer in the ACK: %s", call.call_id, exc)
            self._end(call, Reason.MEDIA)
            return
        self._follow_far_hold(call, rtp, holds)
        leg = call.webrtc
        video = rtp.video if isinstance(rtp, VideoRtpLeg) else None
        if video is not None and leg is not None and leg.has_video:
            self._follow_far_video(call, leg, video)

    def _follow_far_video(self, call: ClientCall, leg: WebRtcLeg, video: RtpVideo) -> None:
        """
        The phone turned its video off (m=video port 0 or inactive) or on again:
        re-offer the client its video inactive or back on, so that it does not
        keep showing the last picture (or shows the new ones). An offer already
        out carries the change in the next negotiation.
        """
        on = video.sending or video.receiving
        allowed = "sendrecv" if on else "inactive"
        if allowed == leg.video_direction:
            return
        logger.info("call %s: the phone turned video %s", call.call_id, "on" if on else "off")
        leg.set_video_direction(allowed)
        if not (call.offer_pending or call.reoffer_pending):
            self._spawn(self._reoffer_client(call, video.video_codec))

    @staticmethod
    def _far_port(call: ClientCall) -> AudioPort | None:
        if call.local is not None:
            return call.local
        if call.winner is not None:
            return call.winner.webrtc
        if call.sip_in is not None:
            return call.sip_in.rtp if call.sip_in.winner is call else None
        if call.rtp is not None and (call.answered or call.early_sdp is not None):
            return call.rtp
        return None

    def _drop_client_leg(self, call: ClientCall) -> None:
        bridge, leg = call.bridge, call.webrtc
        call.bridge = None
        call.webrtc = None
        # A web-to-web caller's bridge relays from this leg; its tasks end when the leg
        # closes, and a restore connects the caller's bridge to the new leg.
        self._spawn(_close_leg(bridge, leg))

    def _accept(self, call: ClientCall) -> None:
        if call.outgoing or not allows(call.state, "accept"):
            self._refuse(call)
            return
        self._set_state(call, CallState.RINGING)
        if call.caller is not None:
            caller = call.caller
            if caller.state is CallState.DIALING:
                caller.alerted = True
                caller.ringback_wanted = True
                self._set_state(caller, CallState.RINGING)
                self._bridge_client_leg(caller)
        elif call.sip_in is not None and not call.sip_in.ringing_sent:
            call.sip_in.ringing_sent = True
            call.sip_in.invite.ringing()

    def _answer(self, call: ClientCall) -> None:
        if call.outgoing or not allows(call.state, "answer") or call.webrtc is None:
            self._refuse(call)
            return
        if call.caller is not None:
            caller = call.caller
            if caller.winner is not None:
                self._refuse(call)
                return
            caller.winner = call
            caller.answered = True
            if caller.no_answer is not None:
                caller.no_answer.cancel()
            self._drop_branches(caller)  # registered phones ringing for the same call
            self._set_state(call, CallState.ACTIVE)
            self._set_state(caller, CallState.ACTIVE)
            self._bridge_client_leg(caller)
            for other in caller.forks:
                if other is not call:
                    self._end(other, Reason.NOT_SELECTED, release=False)
            caller.forks = [call]
        elif call.sip_in is not None:
            incoming = call.sip_in
            if incoming.winner is not None or incoming.rtp is None:
                self._refuse(call)
                return
            incoming.winner = call
            if incoming.timer is not None:
                incoming.timer.cancel()
            self._drop_phones(incoming)  # registered phones ringing for the same call
            incoming.invite.answer(incoming.rtp_answer)
            incoming.invite.set_reoffer_handler(
                lambda offer: self._far_reoffer(incoming.winner, offer)
            )
            incoming.rtp.restart_media_timeout()  # the ring does not count
            call.answered = True
            if call.record is not None:
                call.record.sip(code=200)
            self._set_state(call, CallState.ACTIVE)
            self._bridge_client_leg(call)
            for other in incoming.forks:
                if other is not call:
                    self._end(other, Reason.NOT_SELECTED, release=False)
            incoming.forks = [call]

    # -- incoming SIP calls ------------------------------------------------------------

    def on_invite(self, invite: InboundInvite) -> None:
        numbers = self.config.numbers
        if invite.request_user in (numbers.echo, numbers.tone) and invite.sdp is not None:
            self._spawn(self._answer_sip_locally(invite, invite.request_user == numbers.echo))
            return
        regs = self.logged_in(invite.request_user) + self.sleeping(invite.request_user)
        logger.info(
            "INVITE for %s from %s (Call-ID %s): %d client(s)",
            invite.request_user,
            invite.caller_user,
            invite.call_id,
            len(regs),
        )
        if not regs:
            bindings = self.ua.registrar.bindings(invite.request_user) if self.ua else []
            if bindings and invite.sdp is not None:
                # SIP to SIP: a phone (or the PBX) calls a number registered by phones.
                self._spawn(self._call_phones(invite, bindings))
                return
            invite.reject(480, "Temporarily Unavailable")
            return
        incoming = SipIncoming(invite)
        invite.set_event_handler(lambda ev: self._on_inbound_sip(incoming, ev))
        self._spawn(self._offer_sip_call(incoming, regs))

    async def _call_phones(self, invite: InboundInvite, bindings: list[Binding]) -> None:
        """Ring the registered contacts of the called number (each through its flow) for
        a SIP caller; the first answer is joined to the caller, the others get CANCEL."""
        call = PhoneCall(invite)
        if self.records is not None:
            call.record = CallRecordBuilder(
                direction="sip",
                call_id=invite.call_id,
                local_number=invite.request_user or None,
                remote_number=invite.caller_user or None,
                remote_display_name=invite.caller_display or None,
                sink=self.records.submit,
            )
            call.record.sip(call_id=invite.call_id)
        invite.set_event_handler(lambda ev: self._phone_caller_event(call, ev))
        try:
            call.rtp = await self._open_rtp()
        except OSError as exc:
            logger.error("Call-ID %s: no RTP port: %s", invite.call_id, exc)
            invite.reject(503, "Service Unavailable")
            self._phone_call_record_ended(call, 503)
            return
        try:
            assert invite.sdp is not None
            if offer_has_video(invite.sdp.decode("utf-8", "replace")):
                self._enable_sip_video(call.rtp)  # relayed to the phone that answers
            call.answer = call.rtp.create_answer(invite.sdp)
        except SdpError as exc:
            logger.info("Call-ID %s: offer refused: %s", invite.call_id, exc)
            invite.reject(488, "Not Acceptable Here")
            self._phone_call_record_ended(call, 488)
            await call.rtp.close()
            return
        if call.ended:
            await call.rtp.close()
            return
        logger.info(
            "Call-ID %s: %s calls %d registered contact(s) of %s",
            invite.call_id,
            invite.caller_user,
            len(bindings),
            invite.request_user,
        )
        call.branches = [SipBranch(b.contact, b.source, [None]) for b in bindings]
        for branch in list(call.branches):
            self._spawn(
                self._invite_branch(
                    call.invite,
                    branch,
                    functools.partial(self._phone_branch_event, call, branch),
                    functools.partial(self._phone_branch_failed, call, branch, 503),
                    call.rtp,
                )
            )

    def _phone_branch_event(
        self, call: PhoneCall, branch: SipBranch, ev: sip_events.SessionEvent
    ) -> None:
        if not branch.pending:
            return  # CANCELled (a 2xx crossing the CANCEL is ACKed and BYEd by the UA)
        if isinstance(ev, sip_events.Provisional):
            if ev.sdp is not None and branch.early_sdp is None:
                branch.early_sdp = ev.sdp
            if not call.ringing_sent:
                call.ringing_sent = True
                call.invite.ringing()
                if call.record is not None:
                    call.record.ringing()
        elif isinstance(ev, sip_events.Answered):
            self._phone_answered(call, branch, ev.sdp or branch.early_sdp)
        elif isinstance(ev, sip_events.Rejected | sip_events.Terminated):
            code = ev.code if isinstance(ev, sip_events.Rejected) else 500
            self._phone_branch_failed(call, branch, code)

    def _phone_answered(self, call: PhoneCall, branch: SipBranch, sdp: bytes | None) -> None:
        assert branch.invite is not None and branch.rtp is not None and call.rtp is not None
        try:
            if sdp is None:
                raise SdpError("2xx without SDP")
            branch.rtp.apply_answer(sdp)
        except SdpError as exc:
            logger.info("Call-ID %s: unusable answer of a phone: %s", call.invite.call_id, exc)
            self._phone_branch_failed(call, branch, 488)  # its dialog gets a BYE
            return
        branch.pending = False
        call.branches.remove(branch)
        for other in call.branches:
            self._drop_branch(other)
        call.branches = []
        call.ended = True
        call.answer = self._caller_answer(call.rtp, call.invite.sdp, call.answer, branch.rtp)
        junction = self._join_sip([call.invite, branch.invite], [call.rtp, branch.rtp])
        if call.record is not None:
            call.record.answered()
            call.record.sip(code=200)
            junction.record = call.record
        call.invite.answer(call.answer)
        logger.info("Call-ID %s: %s answered; joined", call.invite.call_id, branch.target)

    def _caller_answer(
        self, rtp: RtpLeg, offer: bytes | None, answer: bytes, phone: RtpLeg
    ) -> bytes:
        """
        The answer for a SIP caller once a phone answered its call: video the
        phone did not take is rejected (port 0) instead of accepted with nothing
        to relay (the answer was made before any phone answered).
        """
        phone_video = phone.video if isinstance(phone, VideoRtpLeg) else None
        if (
            not isinstance(rtp, VideoRtpLeg)
            or rtp.video is None
            or offer is None
            or (phone_video is not None and phone_video.has_video)
        ):
            return answer
        self._spawn(rtp.withdraw_video())
        try:
            return rtp.create_answer(offer)
        except SdpError:
            return answer

    def _join_sip(
        self, sessions: list[OutboundInvite | InboundInvite], rtps: list[RtpLeg]
    ) -> Junction:
        """Join two SIP dialogs (caller, answering phone) in the gateway: media bridged,
        re-offers answered per leg, MESSAGE relayed, either BYE ends both."""
        junction = Junction(sessions, rtps, MediaBridge(rtps[0]))
        for session, rtp in zip(sessions, rtps, strict=True):
            session.set_reoffer_handler(functools.partial(self._junction_reoffer, junction, rtp))
            session.defer_messages()
            session.set_event_handler(
                functools.partial(self._junction_session_event, junction, session)
            )
        junction.bridge.connect(rtps[1])
        self._link_junction_video(junction)
        self._supervise_junction(junction)
        return junction

    @staticmethod
    def _link_junction_video(junction: Junction) -> None:
        """Phone to phone: their video streams, when both have one, relayed as they are."""
        videos = [rtp.video for rtp in junction.rtps if isinstance(rtp, VideoRtpLeg)]
        if len(videos) == 2 and videos[0] is not None and videos[1] is not None:
            junction.bridge.connect_video(videos[0], videos[1])

    def _phone_branch_failed(self, call: PhoneCall, branch: SipBranch, code: int) -> None:
        self._drop_branch(branch)
        if branch not in call.branches:
            return
        call.branches.remove(branch)
        old = call.code
        if not old or (code >= 600 > old) or (old < 600 and code == 486):
            call.code = code
        if not call.branches and not call.ended:
            call.ended = True
            # Busy and global refusals are passed on; anything else: not reachable now.
            code = call.code if call.code in (486, 600, 603) else 480
            call.invite.reject(code)
            self._phone_call_record_ended(call, code)
            if call.rtp is not None:
                self._spawn(call.rtp.close())

    def _phone_caller_event(self, call: PhoneCall, ev: sip_events.SessionEvent) -> None:
        """The SIP caller before a phone answered: CANCEL (or a failure) ends the forks."""
        if call.ended or not isinstance(ev, sip_events.Cancelled | sip_events.Terminated):
            return
        call.ended = True
        branches, call.branches = call.branches, []
        for branch in branches:
            self._drop_branch(branch)
        if call.record is not None:
            # the caller gave up (CANCEL: 487 to it), or its transaction failed
            cancelled = isinstance(ev, sip_events.Cancelled)
            call.record.sip(code=487 if cancelled else None)
            call.record.ended(reason=str(Reason.SUCCESS if cancelled else Reason.ERROR))
        if call.rtp is not None:
            self._spawn(call.rtp.close())

    @staticmethod
    def _phone_call_record_ended(call: PhoneCall, code: int) -> None:
        """A phone-to-phone call that nobody answered: its final status and reason."""
        if call.record is not None:
            call.record.sip(code=code)
            call.record.ended(reason=str(reason_from_sip(code, call.ringing_sent)))

    async def _answer_sip_locally(self, invite: InboundInvite, echo: bool) -> None:
        """A SIP phone calls a test number: the gateway answers it with an echo or a tone."""
        try:
            rtp = await self._open_rtp()
        except OSError as exc:
            logger.error("Call-ID %s: no RTP port: %s", invite.call_id, exc)
            invite.reject(503, "Service Unavailable")
            return
        try:
            assert invite.sdp is not None
            answer = rtp.create_answer(invite.sdp)
        except SdpError as exc:
            logger.info("Call-ID %s: offer refused: %s", invite.call_id, exc)
            invite.reject(488, "Not Acceptable Here")
            await rtp.close()
            return
        port = EchoPort(rtp.sample_rate) if echo else TonePort(1000.0, rtp.sample_rate)
        bridge = MediaBridge(rtp)
        bridge.connect(port)

        def on_event(ev: sip_events.SessionEvent) -> None:
            if isinstance(ev, sip_events.Cancelled | sip_events.Terminated):
                port.close()
                self._spawn(_close_leg(bridge, None))
                self._spawn(rtp.close())

        invite.set_event_handler(on_event)
        invite.answer(answer)
        logger.info("Call-ID %s: %s answered by the gateway", invite.call_id, invite.request_user)

    async def _offer_sip_call(self, incoming: SipIncoming, regs: list[Registration]) -> None:
        media = self.config.media
        invite = incoming.invite
        try:
            rtp = await self._open_rtp(
                media_timeout=media.timeout or None,
                # Shared by the forks until one answers: the winner takes the events.
                on_timeout=lambda: self._far_media_timeout(incoming.winner),
                on_dtmf=lambda digit: self._far_dtmf(incoming.winner, digit),
            )
        except OSError as exc:
            logger.error("Call-ID %s: no RTP port: %s", invite.call_id, exc)
            invite.reject(503, "Service Unavailable")
            return
        incoming.rtp = rtp
        if invite.sdp is not None and offer_has_video(invite.sdp.decode("utf-8", "replace")):
            self._enable_sip_video(rtp)
        try:
            # A late-offer INVITE (no SDP): our offer goes in the 200, the answer comes
            # back in the ACK (Confirmed).
            incoming.rtp_answer = (
                rtp.create_answer(invite.sdp) if invite.sdp is not None else rtp.create_offer()
            )
        except SdpError as exc:
            logger.info("Call-ID %s: offer refused: %s", invite.call_id, exc)
            invite.reject(488, "Not Acceptable Here")
            await rtp.close()
            return
        if incoming.ended:
            await rtp.close()
            return
        caller = Party(invite.caller_user, invite.caller_display)
        if invite.asserted_identity is not None and self._trusted_source(invite.source[0]):
            # RFC 3325: a trusted peer's P-Asserted-Identity names the real caller.
            caller = Party(*invite.asserted_identity)
        for reg in regs:
            if reg.identifier not in self.registrations:
                continue
            fork = ClientCall(
                new_identifier(), reg, False, caller, CallState.OFFERED, sip_in=incoming
            )
            fork.x_headers = self._passable(invite.x_headers)
            self._start_record(fork, "incoming")
            if fork.record is not None:
                fork.record.sip(call_id=invite.call_id)
            reg.calls[fork.call_id] = fork
            incoming.forks.append(fork)
            if reg.attached:
                self._spawn(self._offer_client(fork))
            else:
                self._wake(reg, fork)
        if self.ua is not None and invite.sdp is not None:
            # The number's registered phones ring too (a late-offer INVITE: web only).
            for binding in self.ua.registrar.bindings(invite.request_user):
                branch = SipBranch(binding.contact, binding.source, [None])
                incoming.phones.append(branch)
                self._spawn(
                    self._invite_branch(
                        incoming.invite,
                        branch,
                        functools.partial(self._incoming_phone_event, incoming, branch),
                        functools.partial(self._incoming_phone_failed, incoming, branch),
                        incoming.rtp,
                    )
                )
        if not incoming.forks and not incoming.phones:
            self._sip_in_gone(incoming, 480, "Temporarily Unavailable")
            return
        incoming.timer = asyncio.get_running_loop().call_later(
            self.config.calls.no_answer_timeout, self._no_answer_sip, incoming
        )

    async def _invite_branch(
        self,
        caller: InboundInvite,
        branch: SipBranch,
        on_event: Callable[[sip_events.SessionEvent], None],
        on_no_port: Callable[[], None],
        caller_rtp: RtpLeg | None = None,
    ) -> None:
        """INVITE one registered contact of the number a SIP caller called (through its
        flow, as the caller); `on_event` gets the branch's dialog events. The caller's
        video, if `caller_rtp` negotiated any, is offered in its codec (relayed as it is)."""
        try:
            branch.rtp = await self._open_rtp()
        except OSError as exc:
            logger.error("Call-ID %s: no RTP port for a phone: %s", caller.call_id, exc)
            on_no_port()
            return
        if not branch.pending:
            await branch.rtp.close()
            return
        video = caller_rtp.video if isinstance(caller_rtp, VideoRtpLeg) else None
        if video is not None and video.codec is not None:
            self._enable_sip_video(branch.rtp, video.codec)
        assert self.ua is not None
        branch.invite = self.ua.invite(
            branch.target,
            from_user=caller.caller_user or "anonymous",
            from_display=caller.caller_display,
            sdp=branch.rtp.create_offer(),
            on_event=on_event,
            headers=self._passable(caller.x_headers),
            flow=branch.flow,
        )

    def _incoming_phone_event(
        self, incoming: SipIncoming, branch: SipBranch, ev: sip_events.SessionEvent
    ) -> None:
        if not branch.pending:
            return
        if isinstance(ev, sip_events.Provisional):
            if ev.sdp is not None and branch.early_sdp is None:
                branch.early_sdp = ev.sdp
            if not incoming.ringing_sent:
                incoming.ringing_sent = True
                incoming.invite.ringing()
        elif isinstance(ev, sip_events.Answered):
            self._incoming_phone_answered(incoming, branch, ev.sdp or branch.early_sdp)
        elif isinstance(ev, sip_events.Rejected | sip_events.Terminated):
            self._incoming_phone_failed(incoming, branch)

    def _incoming_phone_answered(
        self, incoming: SipIncoming, branch: SipBranch, sdp: bytes | None
    ) -> None:
        """A phone answered first: the web clients' offers end `notSelected`, the other
        phones get CANCEL, the caller is joined to the phone."""
        assert branch.invite is not None and branch.rtp is not None
        if incoming.winner is not None or incoming.ended or incoming.rtp is None:
            self._incoming_phone_failed(incoming, branch)  # too late: BYE
            return
        try:
            if sdp is None:
                raise SdpError("2xx without SDP")
            branch.rtp.apply_answer(sdp)
        except SdpError as exc:
            logger.info("Call-ID %s: unusable answer of a phone: %s", incoming.invite.call_id, exc)
            self._incoming_phone_failed(incoming, branch)
            return
        branch.pending = False
        incoming.phones.remove(branch)
        self._drop_phones(incoming)
        incoming.ended = True
        if incoming.timer is not None:
            incoming.timer.cancel()
        forks, incoming.forks = incoming.forks, []
        for fork in forks:
            self._end(fork, Reason.NOT_SELECTED, release=False)
        incoming.rtp_answer = self._caller_answer(
            incoming.rtp, incoming.invite.sdp, incoming.rtp_answer, branch.rtp
        )
        incoming.junction = self._join_sip(
            [incoming.invite, branch.invite], [incoming.rtp, branch.rtp]
        )
        incoming.invite.answer(incoming.rtp_answer)
        logger.info("Call-ID %s: %s answered; joined", incoming.invite.call_id, branch.target)

    def _incoming_phone_failed(self, incoming: SipIncoming, branch: SipBranch) -> None:
        self._drop_branch(branch)
        if branch not in incoming.phones:
            return
        incoming.phones.remove(branch)
        if not incoming.phones and not incoming.forks and incoming.winner is None:
            self._sip_in_gone(incoming, 480, "Temporarily Unavailable")

    def _drop_phones(self, incoming: SipIncoming) -> None:
        phones, incoming.phones = incoming.phones, []
        for branch in phones:
            self._drop_branch(branch)

    def _no_answer_sip(self, incoming: SipIncoming) -> None:
        for fork in list(incoming.forks):
            self._end(fork, Reason.NOT_RESPONDING, release=False)
        self._sip_in_gone(incoming, 480, "Temporarily Unavailable")

    def _sip_in_gone(self, incoming: SipIncoming, code: int, phrase: str) -> None:
        """Nobody will answer: refuse the INVITE and free its media."""
        if incoming.ended:
            return
        incoming.ended = True
        if incoming.timer is not None:
            incoming.timer.cancel()
        self._drop_phones(incoming)
        incoming.invite.reject(code, phrase)
        if incoming.rtp is not None:
            self._spawn(incoming.rtp.close())

    def _on_inbound_sip(self, incoming: SipIncoming, ev: sip_events.SessionEvent) -> None:
        if isinstance(ev, sip_events.Confirmed) and ev.sdp is not None:
            if incoming.rtp is not None and incoming.winner is not None:
                try:
                    incoming.rtp.apply_answer(ev.sdp)
                except SdpError as exc:
                    logger.info(
                        "Call-ID %s: unusable answer in the ACK: %s", incoming.invite.call_id, exc
                    )
                    self._client_terminate(incoming.winner, Reason.MEDIA)
            return
        if isinstance(ev, sip_events.InfoReceived) and incoming.winner is not None:
            self._far_info(incoming.winner, ev)
            return
        if isinstance(ev, sip_events.MessageReceived) and incoming.winner is not None:
            self._far_message(incoming.winner, ev)
            return
        if isinstance(ev, sip_events.Referred) and incoming.winner is not None:
            self._spawn(self._referred(incoming.winner, ev))
            return
        if isinstance(ev, sip_events.RemoteAnswer) and incoming.winner is not None:
            self._far_late_answer(incoming.winner, ev.sdp)
            return
        if incoming.junction is not None:
            self._junction_session_event(incoming.junction, incoming.invite, ev)
            return
        if isinstance(ev, sip_events.Cancelled | sip_events.Terminated):
            reason = Reason.SUCCESS
            if isinstance(ev, sip_events.Terminated) and ev.reason != "bye":
                reason = Reason.ERROR
            incoming.ended = True
            if incoming.timer is not None:
                incoming.timer.cancel()
            self._drop_phones(incoming)
            for fork in list(incoming.forks):
                self._end(fork, reason, release=False)
            if incoming.rtp is not None:
                self._spawn(incoming.rtp.close())

    # -- ending calls ------------------------------------------------------------------

    def _set_state(self, call: ClientCall, state: CallState) -> None:
        if call.state is state or call.state in (CallState.TERMINATED, CallState.TERMINATING):
            return
        previous = call.state
        call.state = state
        if call.record is not None:
            if state is CallState.RINGING:
                call.record.ringing()
            elif state is CallState.ACTIVE:
                call.record.answered()
        if call.referred_by is not None:
            if state is CallState.RINGING:
                self._refer_progress(call, 180, "Ringing")
            elif state is CallState.ACTIVE:
                self._refer_progress(call, 200, "OK")
        call.reg.sink(CallStatus(call.call_id, state, None, call.remote))
        offered = (CallState.OFFERED, CallState.RINGING)
        if not call.outgoing and previous in offered and state not in offered:
            self._sync_call_waiting(call.reg, call)

    def _end(
        self, call: ClientCall, reason: Reason, *, notify: bool = True, release: bool = True
    ) -> None:
        """End a client call; with `release`, also end what it is connected to.

        A call whose failure tone plays (`terminating`, _far_failed) ends with the reason
        it failed with, whatever ends it now (the tone's end, the client's hang-up, its lost
        connection, a logout): the call had failed, and its far side is released already.
        """
        if call.state is CallState.TERMINATED:
            return
        previous = call.state
        ended_at = time.time()
        if call.failure is not None:
            reason, release, ended_at = call.failure, False, call.failed_at
            if call.tone_end is not None:
                call.tone_end.cancel()
        call.state = CallState.TERMINATED
        call.reg.calls.pop(call.call_id, None)
        if call.no_answer is not None:
            call.no_answer.cancel()
        logger.info("call %s ended: %s", call.call_id, reason)
        if self.push is not None:
            self.push.tokens.revoke(call_identifier=call.call_id)
        if call.referred_by is not None:
            self._refer_progress(call, *sip_for_reason(reason))
        if release:
            self._release_far(call, previous, reason)
        self._note_far_media(call)
        if notify:
            call.reg.sink(CallStatus(call.call_id, CallState.TERMINATED, reason, call.remote))
        self._spawn(self._close_media(call, reason, ended_at))
        if not call.outgoing and previous in (CallState.OFFERED, CallState.RINGING):
            self._sync_call_waiting(call.reg, call)

    def _release_far(self, call: ClientCall, previous: CallState, reason: Reason) -> None:
        if call.invite is not None and not call.far_ended:
            if call.answered:
                call.invite.bye()
            else:
                call.invite.cancel()
        self._drop_branches(call)
        for fork in list(call.forks):
            # The caller hung up: every callee sees normal clearing.
            self._end(fork, Reason.SUCCESS, release=False)
        if call.caller is not None:
            caller = call.caller
            if call in caller.forks:
                caller.forks.remove(call)
            if caller.winner is call:
                self._end(caller, Reason.SUCCESS, release=False)
            elif not caller.forks and caller.winner is None and not caller.branches:
                # Every web user it rang declined (or went away): e.g. busy, with its tone.
                self._far_failed(
                    caller,
                    reason if reason is not Reason.USER_TERMINATED else Reason.NOT_RESPONDING,
                    release=False,
                )
            elif not caller.forks and caller.winner is None:
                self._single_branch(caller)  # web clients declined; one phone still rings
        if call.sip_in is not None:
            incoming = call.sip_in
            if call in incoming.forks:
                incoming.forks.remove(call)
            if incoming.winner is call:
                if not incoming.ended:
                    incoming.ended = True
                    incoming.invite.bye()
                    if incoming.rtp is not None:
                        self._spawn(incoming.rtp.close())
            elif not incoming.forks and incoming.winner is None and not incoming.phones:
                self._sip_in_gone(incoming, *sip_for_reason(reason))

    async def _close_media(
        self, call: ClientCall, reason: Reason | None = None, ended_at: float | None = None
    ) -> None:
        if call.record is not None and reason is not None:
            await self._finish_record(call, reason, ended_at)
        # bridge, WebRTC leg, RTP leg, local port, each closed whatever the one
        # before it raised (a leg left open keeps its ports and goes on sending);
        # the stack unwinds the last pushed first
        async with contextlib.AsyncExitStack() as closing:
            if call.local is not None:
                closing.callback(call.local.close)
            for part in (call.rtp, call.webrtc, call.bridge):
                if part is not None:
                    closing.push_async_callback(part.close)

    # -- call records ------------------------------------------------------------------

    def _start_record(self, call: ClientCall, direction: str) -> None:
        if self.records is None:
            return
        reg = call.reg
        call.record = CallRecordBuilder(
            direction=direction,
            call_id=call.call_id,
            local_number=reg.number or None,
            local_display_name=reg.display_name or None,
            local_username=reg.username,
            remote_number=call.remote.dial_string,
            remote_display_name=call.remote.display_name or None,
            description=reg.description or None,
            sink=self.records.submit,
        )

    def _note_far_media(self, call: ClientCall) -> None:
        """The far leg's codec and statistics, taken as the call ends (before its RTP
        leg closes or a transfer moves it)."""
        record = call.record
        far = call.rtp or (call.sip_in.rtp if call.sip_in is not None else None)
        if record is None or far is None:
            return
        record.codecs(far=far.codec)
        record.stats(far=dataclasses.asdict(far.stats()))
        video = far.video if isinstance(far, VideoRtpLeg) else None
        if video is not None and video.last_codec is not None:
            # The phone's video codec is the call's: relayed as it is to the browser.
            stats = video.stats()
            record.video(codec=stats.codec, far=dataclasses.asdict(stats))

    async def _finish_record(
        self, call: ClientCall, reason: Reason, ended_at: float | None
    ) -> None:
        record = call.record
        assert record is not None
        client = call.webrtc
        if client is not None:
            record.codecs(client=client.codec)
            try:
                stats = await asyncio.wait_for(client.stats(), RECORD_STATS_TIMEOUT)
            except Exception as exc:  # a closing peer connection may fail in several ways
                logger.debug("call %s: no client leg statistics: %s", call.call_id, exc)
            else:
                record.stats(client=dataclasses.asdict(stats))
            await self._note_client_video(call, client, record)
        record.ended(t=ended_at, reason=str(reason))

    @staticmethod
    async def _note_client_video(
        call: ClientCall, client: WebRtcLeg, record: CallRecordBuilder
    ) -> None:
        """The browser's video statistics, when its leg had video."""
        if client.video is None:
            return
        try:
            stats = await asyncio.wait_for(client.video.stats(), RECORD_STATS_TIMEOUT)
        except Exception as exc:  # as for the audio statistics: the leg may be closing
            logger.debug("call %s: no client video statistics: %s", call.call_id, exc)
            return
        if stats.codec is None or not (
            client.has_video or stats.packets_sent or stats.packets_received
        ):
            return  # video offered but never negotiated
        # Web-to-web calls have no phone's codec: the browser's is the call's.
        record.video(
            codec=None if record.video_codec else stats.codec, client=dataclasses.asdict(stats)
        )

    # -- housekeeping ------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("call task failed", exc_info=task.exception())

    async def close(self) -> None:
        for reg in list(self.registrations.values()):
            self.unregister(reg, Reason.ERROR)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.records is not None:
            await self.records.aclose()
        if self.push is not None:
            await self.push.close()
