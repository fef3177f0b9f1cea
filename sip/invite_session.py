"""Per-call state of the user agent core: one outgoing or incoming INVITE session.

Plain data; `sip.core.UserAgentCore`, `sip.in_dialog`, `sip.prack` and
`sip.session_timer` own the behaviour. Early dialogs exist only for PRACK (RFC 3262).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sipmessage import URI, Address, Request

from .auth import DigestClient
from .dialog import Dialog
from .peer import Peer
from .transaction_layer import TransactionKey


@dataclass(frozen=True)
class IncomingCall:
    """What the core tells its owner about a new incoming INVITE."""

    session_id: str
    call_id: str
    request_user: str
    caller_user: str
    caller_display: str
    sdp: bytes | None
    source: Peer
    replaces: str | None = None  # an RFC 3891 Replaces header value, as received
    authenticated_user: str | None = None  # digest username, when the INVITE was challenged
    # (user, display) of the first P-Asserted-Identity, as received (trust is the owner's call)
    asserted_identity: tuple[str, str] | None = None
    # Every X- header of the INVITE, for the owner to pass on the names it allows.
    x_headers: tuple[tuple[str, str], ...] = ()


@dataclass(eq=False)
class OwnReinvite:
    """Our re-INVITE in progress (sent, or waiting for its 491 glare retry timer)."""

    op: int
    sdp: bytes
    request: Request | None = None
    key: TransactionKey | None = None
    attempts: int = 0
    auth_tried: bool = False
    timing: bool = False  # the reinvite-timeout timer runs (a 1xx arrived)


@dataclass(eq=False)
class PendingOffer:
    """A remote re-INVITE/UPDATE offer (or a re-INVITE without one: OfferWanted) waiting
    for the owner's answer_offer()."""

    key: TransactionKey
    request: Request


@dataclass(eq=False)
class Accepted2xx:
    """Our 2xx to a remote re-INVITE, retransmitted until its ACK (RFC 3261 §13.3.1.4)."""

    sequence: int
    data: bytes
    peer: Peer
    interval: float
    offered: bool  # late offer: the 2xx carried our offer, the ACK carries the answer


@dataclass(eq=False)
class EarlyDialog:
    """UAC: an early dialog created by a reliable provisional response (RFC 3262 §4)."""

    dialog: Dialog
    rseq: int | None = None  # RSeq of the last reliable 1xx we PRACKed


@dataclass(eq=False)
class ReliableProvisional:
    """UAS: our reliable 1xx waiting for its PRACK (RFC 3262 §3)."""

    rseq: int
    data: bytes
    interval: float
    has_sdp: bool


@dataclass(eq=False)
class ReliableState:
    """UAS: RSeq numbering, the unacknowledged reliable 1xx and what waits behind it."""

    next_rseq: int
    outstanding: ReliableProvisional | None = None
    acked: set[int] = field(default_factory=set)  # RSeqs PRACKed already
    waiting: deque[tuple[int, bytes | None]] = field(default_factory=deque)  # (code, sdp)
    deferred_answer: bytes | None = None  # answer() waiting for the PRACK of an SDP 1xx


@dataclass(eq=False)
class SessionTimer:
    """RFC 4028 state of a confirmed session: the interval and who refreshes."""

    interval: int
    we_refresh: bool


@dataclass(eq=False)
class InDialogRequest:
    """A non-INVITE in-dialog request we sent, kept for a digest retry on 401/407."""

    method: str
    body: bytes
    content_type: str | None
    extra: list[tuple[str, str]]
    purpose: str
    auth_tried: bool = False


@dataclass(eq=False)
class DialogUsage:
    """In-dialog operations of an established session: offers, INFO, REFER/NOTIFY."""

    next_op: int = 1
    delegate_offers: bool = False  # the owner answers (OfferReceived, OfferWanted)
    queued: deque[tuple[int, bytes]] = field(default_factory=deque)  # (op, offer)
    own_reinvite: OwnReinvite | None = None
    remote_offer: PendingOffer | None = None
    remote_invite_pending: bool = False  # a remote re-INVITE has no final response yet
    accepted: Accepted2xx | None = None
    acks: dict[int, tuple[bytes, Peer]] = field(default_factory=dict)  # CSeq -> our ACK
    refers: dict[int, int] = field(default_factory=dict)  # our REFER's CSeq -> op
    refer_order: list[int] = field(default_factory=list)  # our REFER CSeqs, oldest first
    refers_final: set[int] = field(default_factory=set)  # final progress already reported
    incoming_refer: int | None = None  # CSeq of the last REFER we accepted
    remote_sdp: bytes | None = None
    # ops of our re-INVITE/UPDATE offers that are UPDATEs: key of the UPDATE -> op
    updates: dict[TransactionKey, tuple[int, bytes]] = field(default_factory=dict)
    refresh_ops: set[int] = field(default_factory=set)  # session-timer refreshes (internal)
    sent: dict[TransactionKey, InDialogRequest] = field(default_factory=dict)
    timer: SessionTimer | None = None
    peer_allow: frozenset[str] = frozenset()  # methods the peer's Allow lists (upper case)
    peer_timer: bool = False  # the peer lists "timer" in Supported/Require
    # MESSAGE (RFC 3428): the owner answers incoming ones itself (respond_message)
    defer_messages: bool = False
    pending_messages: dict[int, PendingOffer] = field(default_factory=dict)  # op -> request
    messages: dict[TransactionKey, int] = field(default_factory=dict)  # our MESSAGE -> op

    def take_op(self) -> int:
        op = self.next_op
        self.next_op += 1
        return op


@dataclass(eq=False)
class OutgoingSession:
    """UAC side (RFC 3261 §13.2)."""

    id: str
    target: URI
    peer: Peer
    local: Address  # From, with our tag
    remote: Address  # To, no tag
    call_id: str
    sdp: bytes | None
    contact: str
    invite: Request
    invite_key: TransactionKey
    digest: DigestClient | None = None
    auth_tried: bool = False
    provisional: bool = False
    final: bool = False
    cancel_requested: bool = False
    cancel_sent: bool = False
    dialog: Dialog | None = None
    ack: bytes | None = None
    ack_peer: Peer | None = None
    # RFC 3263 failover: further (Request-URI, next hop) pairs to try on 503, timeout or
    # transport error before any provisional response; `resolving` while DNS runs.
    alternatives: list[tuple[URI, Peer]] = field(default_factory=list)
    resolving: bool = False
    # The registered contact's flow (see `UserAgentCore.invite`): where the INVITE and,
    # while the remote target stays that contact, every in-dialog request goes.
    flow: Peer | None = None
    early: dict[str, EarlyDialog] = field(default_factory=dict)  # remote tag -> early dialog
    session_expires: int = 0  # RFC 4028 interval we ask for (0 = none); raised by 422
    min_se: int = 0
    # Extra INVITE headers from the owner (P-Asserted-Identity, passed-through X- headers).
    extra_headers: tuple[tuple[str, str], ...] = ()
    ended: bool = False
    reported: bool = False  # a final event (Rejected/Terminated) went to the owner
    transactions: set[TransactionKey] = field(default_factory=set)
    usage: DialogUsage = field(default_factory=DialogUsage)

    @property
    def local_sdp(self) -> bytes | None:
        return self.sdp

    @local_sdp.setter
    def local_sdp(self, value: bytes | None) -> None:
        self.sdp = value


@dataclass(eq=False)
class IncomingSession:
    """UAS side (RFC 3261 §13.3)."""

    id: str
    invite: Request
    key: TransactionKey
    source: Peer
    response_peer: Peer
    local_tag: str
    contact: str
    final: bool = False
    dialog: Dialog | None = None
    answer: bytes | None = None  # the encoded 2xx, re-sent until ACK
    retransmit_interval: float = 0.0
    confirmed: bool = False
    ended: bool = False
    reported: bool = False  # a final event (Cancelled/Terminated) went to the owner
    local_sdp: bytes | None = None
    transactions: set[TransactionKey] = field(default_factory=set)
    usage: DialogUsage = field(default_factory=DialogUsage)
    reliable: ReliableState | None = None  # RFC 3262, once a reliable 1xx was sent
    # UDP caller registered with us from this source with this Contact (host, port):
    # in-dialog requests go back to the source while the remote target is that contact.
    flow_target: tuple[str, int] | None = None


Session = OutgoingSession | IncomingSession
