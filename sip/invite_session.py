"""Per-call state of the user agent core: one outgoing or incoming INVITE session.

Plain data; `sip.core.UserAgentCore` owns the behaviour. Early dialogs, re-INVITE
offers and PRACK are not modelled yet.
"""

from __future__ import annotations

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
    ended: bool = False
    reported: bool = False  # a final event (Rejected/Terminated) went to the owner
    transactions: set[TransactionKey] = field(default_factory=set)


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


Session = OutgoingSession | IncomingSession
