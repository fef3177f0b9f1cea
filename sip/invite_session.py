"""Per-call state of the user agent core: one outgoing or incoming INVITE session.

Plain data; `sip.core.UserAgentCore` and `sip.in_dialog` own the behaviour. Early
dialogs and PRACK are not modelled yet.
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


@dataclass(eq=False)
class OwnReinvite:
    """Our re-INVITE in progress (sent, or waiting for its 491 glare retry timer)."""

    op: int
    sdp: bytes
    request: Request | None = None
    key: TransactionKey | None = None
    attempts: int = 0
    auth_tried: bool = False


@dataclass(eq=False)
class PendingOffer:
    """A remote re-INVITE/UPDATE offer waiting for the owner's answer_offer()."""

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
class DialogUsage:
    """In-dialog operations of an established session: offers, INFO, REFER/NOTIFY."""

    next_op: int = 1
    delegate_offers: bool = False  # the owner answers re-offers (OfferReceived effects)
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


Session = OutgoingSession | IncomingSession
