"""Matches messages to transactions (RFC 3261 §17.1.3 and §17.2.3) and owns them.

Incoming bytes either feed an existing transaction (absorbing retransmissions), create
a server transaction, or surface to the transaction user: new requests, ACKs for 2xx
(which have their own branch), and 2xx responses no transaction claims any more.
Unparseable requests get a stateless 400 when their headers allow one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipmessage import Request, Response

from . import transaction as tx
from .effects import CancelTimer, StartTimer, TimerKey, Transmit
from .messages import (
    BRANCH_MAGIC,
    MAX_HEADER_LINES,
    MAX_MESSAGE,
    ParseError,
    branch_of,
    header_lines,
    parse,
    raw_bad_request,
    rejection_status,
    top_via,
)
from .peer import Peer
from .timers import TimerName, TimerSettings

TransactionKey = tuple[str, ...]


@dataclass(frozen=True, eq=False)
class RequestReceived:
    """A new request (key set: its server transaction) or an ACK outside any (key None)."""

    key: TransactionKey | None
    request: Request
    source: Peer


@dataclass(frozen=True, eq=False)
class ResponseReceived:
    key: TransactionKey
    response: Response


@dataclass(frozen=True, eq=False)
class StrayResponse:
    """A response matching no transaction: a late 2xx retransmission the TU may re-ACK."""

    response: Response
    source: Peer


@dataclass(frozen=True)
class ClientFailed:
    """Timer B/F fired (timeout=True) or the transport failed for a client transaction."""

    key: TransactionKey
    timeout: bool


@dataclass(frozen=True)
class ServerTimedOut:
    """Timer H fired: no ACK for a non-2xx final response."""

    key: TransactionKey


LayerEffect = (
    Transmit
    | StartTimer
    | CancelTimer
    | RequestReceived
    | ResponseReceived
    | StrayResponse
    | ClientFailed
    | ServerTimedOut
)

_CLIENT = "txc"
_SERVER = "txs"


def response_peer(request: Request, source: Peer) -> Peer:
    """Where responses go (RFC 3261 §18.2.2, RFC 3581): the connection, else received/rport."""
    if source.reliable:
        return source
    via = top_via(request)
    if "rport" in via.parameters:
        return source
    return Peer(source.transport, source.host, via.port or 5060)


def stamp_via(request: Request, source: Peer) -> None:
    """Add received (always, it is harmless) and fill rport on the top Via (RFC 3581)."""
    vias = request.via
    top = vias[0]
    params = top.parameters.replace(received=source.host)
    if "rport" in top.parameters:
        params = params.replace(rport=str(source.port))
    vias[0] = type(top)(top.transport, top.host, top.port, params)
    request.via = vias


class TransactionLayer:
    def __init__(
        self,
        settings: TimerSettings,
        *,
        max_message: int = MAX_MESSAGE,
        max_header_lines: int = MAX_HEADER_LINES,
    ) -> None:
        self.settings = settings
        self.max_message = max_message
        self.max_header_lines = max_header_lines
        self.clients: dict[TransactionKey, tx.ClientTransaction] = {}
        self.servers: dict[TransactionKey, tx.ServerTransaction] = {}
        self._client_peers: dict[TransactionKey, Peer] = {}
        self._server_peers: dict[TransactionKey, Peer] = {}

    # -- incoming --------------------------------------------------------------------

    def receive(self, data: bytes, source: Peer) -> list[LayerEffect]:
        if len(data) > self.max_message:
            reply = raw_bad_request(data, "513 Message Too Large")
            return [Transmit(source, reply)] if reply else []
        if header_lines(data) > self.max_header_lines:
            reply = raw_bad_request(data, "400 Too Many Headers")
            return [Transmit(source, reply)] if reply else []
        try:
            message = parse(data)
        except ParseError:
            reply = raw_bad_request(data, rejection_status(data))
            return [Transmit(source, reply)] if reply else []
        if isinstance(message, Response):
            return self._receive_response(message, source)
        try:
            stamp_via(message, source)
        except ValueError:
            return []
        return self._receive_request(message, source)

    def _receive_response(self, response: Response, source: Peer) -> list[LayerEffect]:
        key = (branch_of(response), response.cseq.method)
        transaction = self.clients.get(key)
        if transaction is None:
            if 200 <= response.code < 300 and key[1] == "INVITE":
                return [StrayResponse(response, source)]
            return []
        return self._client_effects(key, transaction.receive(response))

    def _receive_request(self, request: Request, source: Peer) -> list[LayerEffect]:
        key = self.server_key(request)
        transaction = self.servers.get(key)
        if transaction is not None:
            return self._server_effects(key, transaction.receive(request))
        if request.method == "ACK":
            return [RequestReceived(None, request, source)]
        reliable = source.reliable
        transaction = (
            tx.InviteServerTransaction(request, self.settings, reliable)
            if request.method == "INVITE"
            else tx.NonInviteServerTransaction(request, self.settings, reliable)
        )
        self.servers[key] = transaction
        self._server_peers[key] = response_peer(request, source)
        return [RequestReceived(key, request, source)]

    @staticmethod
    def server_key(request: Request) -> TransactionKey:
        via = top_via(request)
        method = "INVITE" if request.method == "ACK" else request.method
        sent_by = f"{via.host}:{via.port or ''}"
        branch = branch_of(request)
        if not branch.startswith(BRANCH_MAGIC):
            # RFC 2543 peer (no magic cookie): match on the request's identity instead
            # (RFC 3261 §17.2.3); the To tag is left out so the ACK of a non-2xx matches.
            tag = request.from_address.parameters.get("tag") or ""
            sequence = str(request.cseq.sequence)
            return ("2543", request.call_id, tag, sequence, branch, sent_by, method)
        return (branch, sent_by, method)

    @staticmethod
    def invite_key_for_cancel(cancel_key: TransactionKey) -> TransactionKey:
        return (*cancel_key[:-1], "INVITE")

    # -- outgoing --------------------------------------------------------------------

    def send_request(
        self, request: Request, peer: Peer
    ) -> tuple[TransactionKey, list[LayerEffect]]:
        key = (branch_of(request), request.method)
        transaction: tx.ClientTransaction
        if request.method == "INVITE":
            transaction = tx.InviteClientTransaction(request, self.settings, peer.reliable)
        else:
            transaction = tx.NonInviteClientTransaction(request, self.settings, peer.reliable)
        self.clients[key] = transaction
        self._client_peers[key] = peer
        return key, self._client_effects(key, transaction.start())

    def respond(self, key: TransactionKey, response: Response) -> list[LayerEffect]:
        transaction = self.servers.get(key)
        if transaction is None:
            return []
        return self._server_effects(key, transaction.respond(response))

    def server_peer(self, key: TransactionKey) -> Peer | None:
        return self._server_peers.get(key)

    # -- timers and transport ---------------------------------------------------------

    def timer_fired(self, key: TimerKey) -> list[LayerEffect]:
        side, *rest, name = key
        tkey = tuple(rest)
        timer = TimerName(name)
        if side == _CLIENT and (client := self.clients.get(tkey)):
            return self._client_effects(tkey, client.timer_fired(timer))
        if side == _SERVER and (server := self.servers.get(tkey)):
            return self._server_effects(tkey, server.timer_fired(timer))
        return []

    @staticmethod
    def owns_timer(key: TimerKey) -> bool:
        return bool(key) and key[0] in (_CLIENT, _SERVER)

    def transport_error(self, peer: Peer) -> list[LayerEffect]:
        effects: list[LayerEffect] = []
        for key, client_peer in list(self._client_peers.items()):
            if client_peer == peer and (client := self.clients.get(key)):
                effects += self._client_effects(key, client.transport_error())
        for key, server_peer in list(self._server_peers.items()):
            if server_peer == peer and (server := self.servers.get(key)):
                effects += self._server_effects(key, server.transport_error())
        return effects

    def _client_effects(self, key: TransactionKey, effects: list[tx.Effect]) -> list[LayerEffect]:
        out: list[LayerEffect] = []
        peer = self._client_peers[key]
        for effect in effects:
            match effect:
                case tx.Send(data):
                    out.append(Transmit(peer, data))
                case tx.StartTimer(name, delay):
                    out.append(StartTimer((_CLIENT, *key, name.value), delay))
                case tx.CancelTimer(name):
                    out.append(CancelTimer((_CLIENT, *key, name.value)))
                case tx.Deliver(message) if isinstance(message, Response):
                    out.append(ResponseReceived(key, message))
                case tx.TimedOut():
                    out.append(ClientFailed(key, timeout=True))
                case tx.TransportFailed():
                    out.append(ClientFailed(key, timeout=False))
                case tx.Terminated():
                    self.clients.pop(key, None)
                    self._client_peers.pop(key, None)
        return out

    def _server_effects(self, key: TransactionKey, effects: list[tx.Effect]) -> list[LayerEffect]:
        out: list[LayerEffect] = []
        peer = self._server_peers[key]
        for effect in effects:
            match effect:
                case tx.Send(data):
                    out.append(Transmit(peer, data))
                case tx.StartTimer(name, delay):
                    out.append(StartTimer((_SERVER, *key, name.value), delay))
                case tx.CancelTimer(name):
                    out.append(CancelTimer((_SERVER, *key, name.value)))
                case tx.Deliver(message) if isinstance(message, Request):
                    out.append(RequestReceived(None, message, peer))
                case tx.TimedOut():
                    out.append(ServerTimedOut(key))
                case tx.Terminated():
                    self.servers.pop(key, None)
                    self._server_peers.pop(key, None)
        return out
