"""
The media sockets' datagram transport.

The event loop's own UDP transports read a socket until it is empty (one
system call more than there are datagrams, at one datagram per call per 20 ms
nearly one per datagram) and make a bytes object and an address tuple for
each datagram before the protocol's callback sees it. For a pass-through
call relayed by a circuit that is most of what is left above the kernel and
libsrtp (bench/README.md, round 14).

``SocketTransport`` reads its socket with an rtc._relay.Reader: one
``recvmmsg`` for what the socket holds, and a datagram that the socket's Tap's
engaged circuit relays (rtc.circuit.tap) is relayed natively, never a Python
object. The loop does not watch each socket: a loop's media sockets' Readers
are in one rtc._relay.Hub (an epoll), which the loop watches as one
descriptor, so that what the loop does per wake-up is done once for all the
sockets ready at that moment, not once per datagram (round 15).

Everything else reaches the protocol's ``datagram_received`` as the loop's
transports give it, with one difference: ``datagram_received`` is looked up
when the protocol is connected (and on ``set_protocol``), not for each
datagram, so a protocol that replaces it later calls ``set_protocol`` again.

RtpLeg's sockets are opened on it (``open_endpoint``), and a WebRTC leg moves
its ICE connection's UDP sockets onto it (``adopt``) once gathered. Without
rtc._relay (not built) the loop's own transports stay.
"""

import asyncio
import logging
import os
import socket
import weakref
from typing import Any

try:
    from ._relay import Hub, Reader
except ImportError:  # not built: the loop's own transports
    Hub = Reader = None  # type: ignore[assignment,misc]

__all__ = ["SocketTransport", "adopt", "open_endpoint"]

logger = logging.getLogger(__name__)

# Linux's, which the socket module does not name
IP_RECVERR = 11
IPV6_RECVERR = 25
# the loop's own datagram transports, which ``adopt`` takes a socket from
LOOP_UDP = frozenset(("UDPTransport", "_SelectorDatagramTransport"))


class SocketTransport(asyncio.DatagramTransport):
    """A non-blocking UDP socket read through the loop's Hub (see the module docstring)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any
    ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname(), "peername": None})
        sock.setblocking(False)
        # ICMP errors reported on the socket (IP_RECVERR): off, as the loops'
        # own transports have them, so that an unconnected socket never carries
        # one (EPOLLERR; libuv's poll, had it the socket, stops on it for good)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 0)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 0)
        self._loop = loop
        self._sock = sock
        self._closing = False
        # the reader holds the socket (not only its number): while registered
        # it cannot be closed by the collector and its number reused
        self._reader = Reader(sock, protocol)
        self._hub = _hub(loop)
        self._hub.add(self._reader)

    def get_protocol(self) -> Any:
        return self._reader.protocol

    def set_protocol(self, protocol: Any) -> None:
        """Also what a protocol whose ``datagram_received`` was replaced calls."""
        self._reader.protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return 0  # nothing is queued: what the socket refuses is lost

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass  # a full send buffer: lost, as on a congested link
        except OSError as exc:
            self._reader.protocol.error_received(exc)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        _leave(self._loop, self._hub, self._reader)
        self._loop.call_soon(self._lost)

    def abort(self) -> None:
        self.close()

    def _lost(self) -> None:
        try:
            self._reader.protocol.connection_lost(None)
        finally:
            self._sock.close()

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<SocketTransport fd={self._sock.fileno()} {state}>"


# the Hub each loop reads its media sockets through, while it has any (a loop
# closed with transports left open takes its Hub with it)
_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()


def _hub(loop: asyncio.AbstractEventLoop) -> Any:
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
        loop.add_reader(hub.fileno(), hub)
    return hub


def _leave(loop: asyncio.AbstractEventLoop, hub: Any, reader: Any) -> None:
    hub.remove(reader)
    if not len(hub) and _hubs.get(loop) is hub:
        loop.remove_reader(_hubs.pop(loop).fileno())  # its epoll closes with it


async def open_endpoint(sock: socket.socket, protocol: Any) -> asyncio.DatagramTransport:
    """The transport for a bound UDP socket, with ``protocol`` connected to it."""
    loop = asyncio.get_running_loop()
    if Reader is None:
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        return transport
    transport = SocketTransport(loop, sock, protocol)
    protocol.connection_made(transport)
    return transport


class _Closed(asyncio.DatagramProtocol):
    """What the transport a socket was taken from reports to: nothing to do."""


def adopt(protocol: Any) -> bool:
    """
    Move ``protocol``'s socket (aioice's ``protocol.transport``, one of the
    loop's own) onto a SocketTransport: True when it was moved. The socket
    stays the same (a duplicate descriptor, so that closing the loop's
    transport leaves it open); no datagram is read between the two.
    """
    old: Any = getattr(protocol, "transport", None)
    if Reader is None or type(old).__name__ not in LOOP_UDP or old.is_closing():
        return False
    sock = old.get_extra_info("socket")
    if sock is None:
        return False
    try:
        copy = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError as exc:
        logger.debug("keeping the loop's transport for %r: %s", old, exc)
        return False
    loop = asyncio.get_running_loop()
    protocol.transport = SocketTransport(loop, copy, protocol)
    old.set_protocol(_Closed())
    old.close()
    return True
