"""A NAT in front of a phone, on loopback, for tests of symmetric RTP and its rebinding
(rtc.latch): in-process in tests/rtc/test_latch.py, in front of a real SIP peer
in tests/e2e/test_nat_rebinding.py.

The phone sends its RTP to the NAT's ``inside`` port (``through_nat`` points an SDP's
audio there); the NAT sends it on to the gateway from its current public port, and what
the gateway sends to that public port goes back to the phone. ``rebind()`` gives the
mapping a new public port, as a NAT does when a mapping times out or the router
restarts: the phone's stream goes on from there, and the old port forwards nothing any
more.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

Address = tuple[str, int]


class Mapping:
    """One public port of the NAT and the datagrams that crossed it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        # (monotonic arrival time, datagram) for everything the gateway sent here, also
        # once the mapping expired (then dropped, not forwarded: a test sees if it stops)
        self.received: list[tuple[float, bytes]] = []
        self.sent = 0  # datagrams of the phone sent on from here
        self.expired = False

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


class Nat:
    """A NAT mapping between a phone and a gateway (see the module docstring).

    ``port`` picks the ports to bind (default 0: the system's choice).
    """

    def __init__(self, host: str = "127.0.0.1", port: Callable[[], int] = lambda: 0) -> None:
        self.host = host
        self._port = port
        self.gateway: Address | None = None  # where the phone's RTP goes (the gateway's SDP)
        self.phone: Address | None = None  # where the phone's RTP comes from
        self.inside: asyncio.DatagramTransport | None = None
        self.mappings: list[Mapping] = []  # every public port, the current one last

    @classmethod
    async def open(cls, host: str = "127.0.0.1", port: Callable[[], int] = lambda: 0) -> Nat:
        nat = cls(host, port)
        nat.inside, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Relay(nat.from_phone), local_addr=(host, port())
        )
        await nat.rebind()
        return nat

    @property
    def inside_port(self) -> int:
        assert self.inside is not None
        return int(self.inside.get_extra_info("sockname")[1])

    @property
    def public(self) -> Mapping:
        """The current mapping."""
        return self.mappings[-1]

    @property
    def public_address(self) -> Address:
        return (self.host, self.public.port)

    async def rebind(self) -> Mapping:
        """A new public port: the phone's RTP leaves from there from now on, and what the
        gateway still sends to the old one is dropped. The new mapping."""
        mapping = Mapping()
        mapping.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Relay(lambda data, addr: self.from_gateway(mapping, data)),
            local_addr=(self.host, self._port()),
        )
        if self.mappings:
            self.public.expired = True
        self.mappings.append(mapping)
        return mapping

    def from_phone(self, data: bytes, addr: Address) -> None:
        self.phone = addr
        mapping = self.public
        if mapping.transport is not None and self.gateway is not None:
            mapping.sent += 1
            mapping.transport.sendto(data, self.gateway)

    def from_gateway(self, mapping: Mapping, data: bytes) -> None:
        mapping.received.append((time.monotonic(), data))
        if not mapping.expired and self.inside is not None and self.phone is not None:
            self.inside.sendto(data, self.phone)

    def close(self) -> None:
        for transport in (self.inside, *(m.transport for m in self.mappings)):
            if transport is not None:
                transport.close()


class _Relay(asyncio.DatagramProtocol):
    def __init__(self, on_data: Callable[[bytes, Address], None]) -> None:
        self._on_data = on_data

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._on_data(data, addr)


def through_nat(sdp: bytes, nat: Nat) -> bytes:
    """The gateway's SDP as the phone uses it: its audio sent to the NAT's inside port."""
    return re.sub(rb"m=audio \d+", b"m=audio %d" % nat.inside_port, sdp)
