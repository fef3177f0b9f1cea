"""UDP and TCP on one address and port, and optionally TLS on another, for the user agent.

Messages come in as (bytes, Peer). Stream connections (TCP, TLS) are kept in a table
keyed by transport and remote address whichever side opened them, so responses and
in-dialog requests reuse the connection a request arrived on. Send failures are
reported per peer. TLS certificate checks are on unless the client context given
says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

from ..framing import FramingError, StreamFramer
from ..peer import Peer
from ..websocket import WebSocketFramingError, decode_message, encode_message, transport_name

log = logging.getLogger(__name__)

MessageHandler = Callable[[bytes, Peer], None]
ErrorHandler = Callable[[Peer], None]
MAX_CONNECTIONS = 1024  # bound on open stream connections (design rule: every input bounded)
ConnectionKey = tuple[str, str, int]  # (transport, host, port)


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, owner: Transport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not data.strip():
            return  # RFC 5626 keep-alive
        self.owner._deliver(data, Peer("UDP", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors carry no usable peer here; the transaction timers handle it.
        log.debug("UDP error: %s", exc)


class _Stream(asyncio.Protocol):
    def __init__(
        self, owner: Transport, name: str = "TCP", key: ConnectionKey | None = None
    ) -> None:
        self.owner = owner
        self.name = name
        self.key = key
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not a subclass of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        if len(self.owner._connections) >= MAX_CONNECTIONS:
            log.warning("too many TCP connections; refusing one")
            self.key = None
            transport.close()
            return
        if self.key is None:
            host, port = transport.get_extra_info("peername")[:2]
            self.key = (self.name, str(host), int(port))
        self.owner._connections[self.key] = self

    def data_received(self, data: bytes) -> None:
        if self.key is None:
            return
        pings = self.framer.keepalives
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            log.info("closing TCP connection from %s: %s", self.key, exc)
            if self.transport:
                self.transport.close()
            return
        if self.framer.keepalives > pings and self.transport is not None:
            self.transport.write(b"\r\n")  # RFC 5626 §3.5.1: pong a double-CRLF ping
        for message in messages:
            self.owner._deliver(message, Peer(*self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None and self.owner._connections.get(self.key) is self:
            del self.owner._connections[self.key]

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


WebSocketSend = Callable[[str], Awaitable[None]]
MAX_WS_QUEUE = 256  # messages waiting to be written to one WebSocket


class WebSocketConnection:
    """A SIP-over-WebSocket connection (RFC 7118) served by an external WebSocket server.

    The server calls `receive(message)` for every text (or binary) message and
    `closed()` once the socket is gone; the UA writes with the `send` coroutine it was
    given, one SIP message per WebSocket message, in order. `peer` is how the core
    addresses the connection (transport "WS"/"WSS" and the remote address).
    """

    def __init__(
        self,
        owner: Transport,
        send: WebSocketSend,
        close: Callable[[], object],
        remote: tuple[str, int],
        secure: bool,
    ) -> None:
        self._owner = owner
        self._send = send
        self._close = close
        self.peer = Peer(transport_name(secure), str(remote[0]), int(remote[1]))
        self._outgoing: deque[str | bytes] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.is_closed = False

    def receive(self, message: str | bytes) -> None:
        """Hand over one WebSocket message from the client."""
        if self.is_closed:
            return
        try:
            data = decode_message(message, self._owner.max_ws_message)
        except WebSocketFramingError as exc:
            log.info("closing WebSocket %s: %s", self.peer, exc)
            self.close()
            return
        if data is not None:
            self._owner._deliver(data, self.peer)

    def closed(self) -> None:
        """The WebSocket is gone: forget it; later sends to it fail as transport errors."""
        if self.is_closed:
            return
        self.is_closed = True
        self._outgoing.clear()
        if self._owner._websockets.get(self.peer) is self:
            del self._owner._websockets[self.peer]

    def close(self) -> None:
        """Close it from our side (the server's `close` callable), then forget it."""
        if not self.is_closed:
            try:
                self._close()
            except Exception:
                log.exception("closing WebSocket %s failed", self.peer)
        self.closed()

    def write(self, data: bytes) -> None:
        if self.is_closed:
            self._owner._fail(self.peer)
            return
        if len(self._outgoing) >= MAX_WS_QUEUE:
            log.warning("WebSocket %s is not draining; closing it", self.peer)
            self.close()
            self._owner._fail(self.peer)
            return
        self._outgoing.append(encode_message(data))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
            self._owner._tasks.add(self._writer)
            self._writer.add_done_callback(self._owner._tasks.discard)

    async def _drain(self) -> None:
        while self._outgoing and not self.is_closed:
            message = self._outgoing.popleft()
            try:
                await self._send(message)  # type: ignore[arg-type]  # binary when not UTF-8
            except Exception as exc:  # the server's socket failed under us
                log.info("WebSocket send to %s failed: %s", self.peer, exc)
                self.closed()
                self._owner._fail(self.peer)
                return


class Transport:
    def __init__(
        self,
        host: str,
        port: int,
        on_message: MessageHandler,
        on_error: ErrorHandler,
        keepalive_interval: float = 0.0,
        *,
        tls_port: int | None = None,
        tls_server: ssl.SSLContext | None = None,
        tls_client: ssl.SSLContext | None = None,
    ):
        """`keepalive_interval` > 0: send a CRLF CRLF ping (RFC 5626) on every TCP
        connection that often, so NATs and firewalls keep the flow open."""
        self.keepalive_interval = keepalive_interval
        self.requested_tls_port = tls_port
        self.tls_port: int | None = None
        self.tls_server = tls_server
        self.tls_client = tls_client
        self._tls: asyncio.Server | None = None
        self.host = host
        self.requested_port = port
        self.on_message = on_message
        self.on_error = on_error
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._connections: dict[ConnectionKey, _Stream] = {}
        self._pending: dict[ConnectionKey, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._websockets: dict[Peer, WebSocketConnection] = {}
        self.max_ws_message = 65536
        self.port = port

    def attach_websocket(
        self,
        send: WebSocketSend,
        close: Callable[[], object],
        remote: tuple[str, int],
        *,
        secure: bool = False,
    ) -> WebSocketConnection:
        """Serve SIP on a WebSocket accepted by someone else (RFC 7118)."""
        connection = WebSocketConnection(self, send, close, remote, secure)
        if len(self._websockets) >= MAX_CONNECTIONS:
            log.warning("too many WebSocket connections; refusing one")
            connection.close()
            return connection
        old = self._websockets.get(connection.peer)
        if old is not None:
            old.closed()
        self._websockets[connection.peer] = connection
        return connection

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        attempts = 20 if self.requested_port == 0 else 1
        for attempt in range(attempts):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagram(self), local_addr=(self.host, self.requested_port)
            )
            port = int(udp.get_extra_info("sockname")[1])
            try:
                self._server = await loop.create_server(
                    lambda: _Stream(self), self.host, port, reuse_address=True
                )
            except OSError:
                udp.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp = udp
            self.port = port
            if self.tls_server is not None and self.requested_tls_port is not None:
                self._tls = await loop.create_server(
                    lambda: _Stream(self, "TLS"),
                    self.host,
                    self.requested_tls_port,
                    ssl=self.tls_server,
                    reuse_address=True,
                )
                self.tls_port = int(self._tls.sockets[0].getsockname()[1])
            if self.keepalive_interval > 0:
                task = loop.create_task(self._keepalive())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_interval)
            for connection in list(self._connections.values()):
                if connection.transport is not None and not connection.transport.is_closing():
                    connection.transport.write(b"\r\n\r\n")

    def _deliver(self, data: bytes, peer: Peer) -> None:
        try:
            self.on_message(data, peer)
        except Exception:  # a bug in one message's handling must not kill the socket
            log.exception("error handling message from %s", peer)

    def send(self, peer: Peer, data: bytes) -> None:
        if peer.transport == "UDP":
            if self._udp is None:
                return
            try:
                self._udp.sendto(data, peer.address)
            except (OSError, ValueError):
                # uvloop raises ValueError for an address of the other family or
                # a host name (asyncio's loop: OSError, or a DNS lookup per send)
                log.info("UDP send to %s failed", peer)
                self._fail(peer)
            return
        if peer.transport in ("WS", "WSS"):
            websocket = self._websockets.get(peer)
            if websocket is None:
                # We cannot open WebSockets: the client must be connected.
                log.info("no WebSocket connection to %s", peer)
                self._fail(peer)
                return
            websocket.write(data)
            return
        if peer.transport not in ("TCP", "TLS"):
            log.warning("unsupported transport %s", peer.transport)
            self._fail(peer)
            return
        key = (peer.transport, peer.host, peer.port)
        connection = self._connections.get(key)
        if connection is not None and connection.transport is not None:
            connection.write(data)
            return
        pending = self._pending.get(key)
        if pending is not None:
            pending.append(data)
            return
        if peer.flow:
            # The peer's connection to us is gone; its port is an ephemeral one we cannot
            # connect to (and behind NAT a connect would hang): fail now.
            log.info("%s flow to %s is closed", peer.transport, peer)
            self._fail(peer)
            return
        self._pending[key] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, peer: Peer) -> None:
        key = (peer.transport, peer.host, peer.port)
        loop = asyncio.get_running_loop()
        try:
            if peer.transport == "TLS":
                context = self.tls_client or ssl.create_default_context()
                await loop.create_connection(
                    lambda: _Stream(self, "TLS", key),
                    peer.host,
                    peer.port,
                    ssl=context,
                    server_hostname=peer.host,
                )
            else:
                await loop.create_connection(
                    lambda: _Stream(self, "TCP", key), peer.host, peer.port
                )
        except (OSError, ssl.SSLError) as exc:
            log.info("%s connect to %s failed: %s", peer.transport, peer, exc)
            self._pending.pop(key, None)
            self._fail(peer)
            return
        connection = self._connections.get(key)
        for data in self._pending.pop(key, []):
            if connection is not None:
                connection.write(data)

    def _fail(self, peer: Peer) -> None:
        # Report from the loop so the caller's effect processing is not re-entered.
        asyncio.get_running_loop().call_soon(self.on_error, peer)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self._connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        self._connections.clear()
        for websocket in list(self._websockets.values()):
            websocket.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in (self._server, self._tls):
            if server is not None:
                server.close()
                await server.wait_closed()
        self._server = self._tls = None
