"""
rtc.udp: the media sockets' transport, read by rtc._relay's Reader and Hub, on both
loops the gateway may run on (asyncio's and uvloop, which gateway/cli.py uses).
"""

import asyncio
import gc
import logging
import select
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

import rtc.circuit
import rtc.udp
from rtc.circuit import Inbound, Outbound
from rtc.rtp import RTP_FIXED_HEADER
from rtc.udp import IP_RECVERR, SocketTransport, adopt, open_endpoint

from .test_circuit import SSRC, Leg, rtp

pytestmark = pytest.mark.skipif(not rtc.circuit.NATIVE, reason="rtc._relay is not built")

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    def runner(coroutine: Awaitable[Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(asyncio.wait_for(coroutine, 10))  # type: ignore[arg-type]

    return runner


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.errors: list[Exception] = []
        self.made: list[Any] = []
        self.lost: list[Any] = []
        self.arrived = asyncio.Event()
        self.want = 0

    def connection_made(self, transport: Any) -> None:
        self.made.append(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))
        if len(self.got) >= self.want:
            self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    async def wait(self, count: int) -> None:
        self.want = count
        if len(self.got) < count:
            self.arrived.clear()
            await self.arrived.wait()


def bound(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_datagrams_arrive_in_order_with_the_loops_addresses(
    run: Callable[[Awaitable[Any]], Any], host: str
) -> None:
    """More than one recvmmsg batch (8) at once; the address as the loops give it."""
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main() -> None:
        protocol = Recorder()
        sock = bound(host)
        transport = await open_endpoint(sock, protocol)
        assert isinstance(transport, SocketTransport)
        assert protocol.made == [transport]
        assert transport.get_extra_info("socket") is sock
        assert transport.get_extra_info("sockname") == sock.getsockname()
        with bound(host) as peer:
            for k in range(20):
                peer.sendto(bytes([k]) * (k + 1), sock.getsockname())
            await protocol.wait(20)
            assert [data for data, _ in protocol.got] == [bytes([k]) * (k + 1) for k in range(20)]
            expected = peer.getsockname()  # (host, port) or (host, port, flowinfo, scope_id)
            loop_given = await uvloop_or_asyncio_address(host, peer)
            assert {addr for _, addr in protocol.got} == {expected} == {loop_given}
            # and back, to the address as received
            transport.sendto(b"back", protocol.got[0][1])
            peer.settimeout(2)
            assert peer.recv(100) == b"back"
        transport.close()
        assert transport.is_closing()
        await asyncio.sleep(0.01)
        assert protocol.lost == [None]
        assert sock.fileno() == -1  # closed once connection_lost was told

    run(main())


async def uvloop_or_asyncio_address(host: str, peer: socket.socket) -> Any:
    """The address the running loop's own transport gives for a datagram from ``peer``."""
    loop = asyncio.get_running_loop()
    protocol = Recorder()
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=(host, 0))
    try:
        peer.sendto(b"x", transport.get_extra_info("sockname"))
        await protocol.wait(1)
        return protocol.got[0][1]
    finally:
        transport.close()


def test_the_loop_reads_all_media_sockets_as_one(run: Callable[[Awaitable[Any]], Any]) -> None:
    """
    One hub (an epoll) per loop for its media sockets, gone with the last of
    them; a socket taken out in a round (its transport closed by another's
    callback) is not read in that round.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = Recorder(), Recorder()
        transports = [await open_endpoint(bound(), p) for p in (first, second)]
        hub = rtc.udp._hubs[loop]
        assert len(hub) == 2
        for protocol, other in ((first, transports[1]), (second, transports[0])):
            received = protocol.datagram_received

            def datagram_received(data: bytes, addr: Any, received: Any = received,
                                  other: Any = other) -> None:
                received(data, addr)
                other.close()

            protocol.datagram_received = datagram_received  # type: ignore[method-assign]
        for transport, protocol in zip(transports, (first, second), strict=True):
            transport.set_protocol(protocol)  # the callback as it is now
        with bound() as peer:
            for transport in transports:  # both ready for the same round
                peer.sendto(b"x", transport.get_extra_info("sockname"))
            await asyncio.sleep(0.05)
        assert len(first.got) + len(second.got) == 1
        assert sum(t.is_closing() for t in transports) == 1 and len(hub) == 1
        for transport in transports:
            transport.close()
        assert loop not in rtc.udp._hubs  # both closed: the hub is gone
        await asyncio.sleep(0.01)
        assert first.lost == [None] and second.lost == [None]

    run(main())


def test_a_transport_nobody_holds_reads_on(run: Callable[[Awaitable[Any]], Any]) -> None:
    """The loop's reader holds the socket, so the collector never closes it under
    the reader (and a new socket never gets its number and this protocol)."""

    async def main() -> None:
        protocol = Recorder()
        sock = bound()
        where = sock.getsockname()
        await open_endpoint(sock, protocol)
        fd = sock.fileno()
        del sock
        protocol.made.clear()
        gc.collect()
        with bound() as other, bound() as peer:  # would take the number of a closed one
            peer.sendto(b"still", where)
            await protocol.wait(1)
            assert protocol.got[0][0] == b"still"
            other.sendto(b"x", other.getsockname())
            await asyncio.sleep(0.01)
            assert len(protocol.got) == 1
        asyncio.get_running_loop().remove_reader(fd)  # and the socket goes

    run(main())


def test_an_error_in_the_callback_loses_no_other_datagram(
    run: Callable[[Awaitable[Any]], Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        protocol = Recorder()
        received = protocol.datagram_received

        def datagram_received(data: bytes, addr: Any) -> None:
            received(data, addr)
            if data == b"bad":
                raise RuntimeError("the protocol's own bug")

        protocol.datagram_received = datagram_received  # type: ignore[method-assign]
        sock = bound()
        transport = await open_endpoint(sock, protocol)  # after: it takes it as it is
        with bound() as peer:
            for data in (b"one", b"bad", b"two", b"three"):
                peer.sendto(data, sock.getsockname())
            await protocol.wait(4)
            peer.sendto(b"four", sock.getsockname())
            await protocol.wait(5)
        assert [data for data, _ in protocol.got] == [b"one", b"bad", b"two", b"three", b"four"]
        transport.close()

    with caplog.at_level(logging.ERROR):
        run(main())
    # the loop's exception handler reported it; the socket was read on
    assert "the protocol's own bug" in caplog.text


def test_an_icmp_report_never_stops_the_reading(run: Callable[[Awaitable[Any]], Any]) -> None:
    """
    An ICMP report on a socket with IP_RECVERR raises EPOLLERR, on which
    libuv's poll stops reading for good: the transport turns IP_RECVERR off,
    as the loops' own transports have it, and the reports never come.
    """

    async def main() -> None:
        protocol = Recorder()
        sock = bound()
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        transport = await open_endpoint(sock, protocol)
        with bound() as gone:
            nobody = gone.getsockname()
        with bound() as peer:
            for _ in range(3):
                transport.sendto(b"anyone?", nobody)  # port unreachable comes back
                await asyncio.sleep(0.05)
                peer.sendto(b"after", sock.getsockname())
            await protocol.wait(3)
        assert [d for d, _ in protocol.got] == [b"after"] * 3 and protocol.errors == []
        transport.close()

    run(main())


def test_a_receive_error_goes_to_error_received() -> None:
    """What recvmmsg reports (here an ICMP report on a socket with IP_RECVERR)."""
    from rtc import _relay

    protocol = Recorder()
    with bound() as sock, bound() as gone:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        nobody = gone.getsockname()
        gone.close()
        sock.sendto(b"anyone?", nobody)
        select.select([sock], [], [], 2)
        hub = _relay.Hub()
        hub.add(_relay.Reader(sock, protocol))
        hub()
        assert [type(e) for e in protocol.errors] == [ConnectionRefusedError]
        hub()  # nothing there: nothing happens
        assert len(protocol.errors) == 1 and protocol.got == []


def test_set_protocol_moves_the_datagrams(run: Callable[[Awaitable[Any]], Any]) -> None:
    async def main() -> None:
        first, second = Recorder(), Recorder()
        sock = bound()
        transport = await open_endpoint(sock, first)
        with bound() as peer:
            peer.sendto(b"1", sock.getsockname())
            await first.wait(1)
            transport.set_protocol(second)
            assert transport.get_protocol() is second
            peer.sendto(b"2", sock.getsockname())
            await second.wait(1)
        assert [d for d, _ in first.got] == [b"1"] and [d for d, _ in second.got] == [b"2"]
        transport.close()
        await asyncio.sleep(0.01)
        assert second.lost == [None] and first.lost == []

    run(main())


def test_adopt_takes_the_socket_from_the_loops_transport(
    run: Callable[[Awaitable[Any]], Any],
) -> None:
    """As a WebRTC leg does with aioice's sockets: same socket, the protocol none the wiser."""

    class Stun(Recorder):
        transport: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.transport = transport

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protocol = Stun()
        old, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=("127.0.0.1", 0))
        where = old.get_extra_info("sockname")
        with bound() as peer:
            peer.sendto(b"before", where)
            await protocol.wait(1)
            peer.sendto(b"in between", where)  # waits in the socket across the move
            assert adopt(protocol)
            new = protocol.transport
            assert isinstance(new, SocketTransport) and old.is_closing()
            assert not adopt(protocol)  # once
            assert new.get_extra_info("sockname") == where
            await protocol.wait(2)
            peer.sendto(b"after", where)
            await protocol.wait(3)
            await asyncio.sleep(0.01)  # the old transport's close is done
            new.sendto(b"from the same port", protocol.got[0][1])
            peer.settimeout(2)
            data, source = peer.recvfrom(100)
            assert (data, source) == (b"from the same port", where)
        assert [d for d, _ in protocol.got] == [b"before", b"in between", b"after"]
        assert protocol.lost == []  # the old transport's close did not reach it
        new.close()
        await asyncio.sleep(0.01)
        assert protocol.lost == [None]

    run(main())


class CountingPeer(tuple):  # type: ignore[type-arg]
    """A peer address that counts Python's comparisons with it."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountingPeer.compared += 1
        return tuple(self) == other

    __hash__ = tuple.__hash__


async def received(sock: socket.socket, count: int) -> list[bytes]:
    """The next ``count`` datagrams at ``sock``, the loop running meanwhile."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    return [await loop.sock_recv(sock, 2048) for _ in range(count)]


@pytest.mark.parametrize("bound_receiving", [True, False])
def test_what_continues_a_circuits_stream_is_relayed_without_python(
    run: Callable[[Awaitable[Any]], Any], bound_receiving: bool
) -> None:
    """
    The socket's Tap's engaged circuit relays what continues its stream
    without the interpreter: not even the peer's address is compared in
    Python (once the receiving socket is bound, as the legs bind it); the rest
    reaches the leg's callback as the loop would hand it over.
    """
    from rtc import _relay

    async def main() -> None:
        rx, tx, far = bound(), bound(), bound()
        with bound() as src, tx, far:
            a, b = Leg(), Leg()
            peer = CountingPeer(src.getsockname())
            inbound = Inbound(SSRC, 0, 100, 8000, 160, 160, 8000, None, peer=peer)
            outbound = Outbound(
                0x80, 0, 0x2222, 7, 70, 160, b"", None, tx.sendto, far.getsockname()
            )
            circuit = rtc.circuit.Circuit(a, inbound, b, outbound)
            got = Recorder()
            tap = _relay.Tap(a, got.datagram_received)
            protocol = Recorder()
            protocol.datagram_received = tap  # type: ignore[method-assign]
            transport = await open_endpoint(rx, protocol)
            receiving = (rx.fileno(), socket.AF_INET, tap) if bound_receiving else ()
            circuit._bind_native(0, 0, 0, 0, 0, 0, tx.fileno(), socket.AF_INET, *receiving)
            assert circuit.receiving == bound_receiving
            CountingPeer.compared = 0
            for k in range(30):
                src.sendto(rtp(100 + k, 8000 + 160 * k), rx.getsockname())
            relayed = [RTP_FIXED_HEADER.unpack_from(p)[2:4] for p in await received(far, 30)]
            assert relayed == [(7 + k, 70 + 160 * k) for k in range(30)]
            assert circuit.packets == 30 and got.got == []
            assert CountingPeer.compared == (0 if bound_receiving else 30)
            # RTCP is not the stream's: to the leg, as the loop gives it
            src.sendto(b"\x81\xc9\x00\x01" + b"\x00" * 4, rx.getsockname())
            await got.wait(1)
            assert got.got == [(b"\x81\xc9\x00\x01" + b"\x00" * 4, src.getsockname())]
            assert circuit.engaged
            circuit.release()
            # released: the stream's next packet is the leg's, not relayed
            src.sendto(rtp(130, 8000 + 160 * 30), rx.getsockname())
            await got.wait(2)
            assert got.got[1] == (rtp(130, 8000 + 160 * 30), src.getsockname())
            assert circuit.packets == 0  # synced at the release, nothing since
            transport.close()

    run(main())
