"""Calls to a registered contact go through the flow its REGISTER came on (RFC 5626
style connection reuse): raw TCP and UDP sockets play a phone whose Contact points at
an address where nothing listens."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from sipmessage import Request, Response

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Answered, Rejected, Terminated
from sip.framing import StreamFramer
from sip.messages import parse

from .test_useragent import ANSWER, FAST, OFFER, Recorder


def _dead_port(kind: int) -> int:
    """A loopback port with nothing listening on it (bound then closed)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register(transport: str, contact_port: int, local: tuple[str, int]) -> bytes:
    host, port = local
    return (
        f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bKreg1;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@127.0.0.1>;tag=r1\r\n"
        "To: <sip:1001@127.0.0.1>\r\n"
        "Call-ID: flow-reg-1\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:1001@127.0.0.1:{contact_port};transport={transport.lower()}>\r\n"
        "Expires: 600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _response(request: Request, code: int, phrase: str, tag: str, contact: str) -> bytes:
    lines = [f"SIP/2.0 {code} {phrase}"]
    lines += [f"Via: {via}" for via in request.headers.getlist("Via")]
    to = request.headers["To"] + (f";tag={tag}" if code > 100 else "")
    lines += [
        f"From: {request.headers['From']}",
        f"To: {to}",
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.headers['CSeq']}",
    ]
    body = b""
    if code == 200 and request.method == "INVITE":
        lines += [f"Contact: <{contact}>", "Content-Type: application/sdp"]
        body = ANSWER
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Tcp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.queue: list[bytes] = []

    async def next(self) -> Request | Response:
        while not self.queue:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "connection closed"
            self.queue += self.framer.feed(data)
        return parse(self.queue.pop(0))

    def send(self, data: bytes) -> None:
        self.writer.write(data)


def _ua() -> UserAgent:
    return UserAgent(
        UAConfig(port=0, registrar=True, trusted_networks=("127.0.0.1",), **FAST),  # type: ignore[arg-type]
        lambda invite: None,
    )


async def test_call_reaches_a_tcp_phone_over_its_registration_connection():
    ua = _ua()
    await ua.start()
    dead = _dead_port(socket.SOCK_STREAM)
    try:
        phone = _Tcp(*await asyncio.open_connection("127.0.0.1", ua.port))
        local = phone.writer.get_extra_info("sockname")[:2]
        phone.send(_register("TCP", dead, local))
        ok = await phone.next()
        assert isinstance(ok, Response) and ok.code == 200
        (binding,) = ua.registrar.bindings("1001")
        assert binding.source.transport == "TCP" and binding.source.port == local[1]
        contact = binding.contact
        assert contact == f"sip:1001@127.0.0.1:{dead};transport=tcp"

        recorder = Recorder()
        call = ua.invite(
            contact, from_user="2000", sdp=OFFER, on_event=recorder, flow=binding.source
        )
        invite = await phone.next()
        assert isinstance(invite, Request) and invite.method == "INVITE"
        assert str(invite.uri) == contact  # the Request-URI is still the registered contact
        assert invite.via[0].transport == "TCP"
        phone.send(_response(invite, 180, "Ringing", "ph1", contact))
        phone.send(_response(invite, 200, "OK", "ph1", contact))
        assert await recorder.wait_for(Answered) == Answered(ANSWER)
        ack = await phone.next()
        assert isinstance(ack, Request) and ack.method == "ACK"
        assert str(ack.uri) == contact

        call.bye()
        bye = await phone.next()  # on the same connection, not a new one to the dead port
        assert isinstance(bye, Request) and bye.method == "BYE"
        phone.send(_response(bye, 200, "OK", "ph1", contact))
        await asyncio.sleep(0.05)

        # The phone's connection closes: a new call fails at once, nothing is dialled.
        phone.writer.close()
        await asyncio.sleep(0.1)
        failed = Recorder()
        loop = asyncio.get_running_loop()
        started = loop.time()
        ua.invite(contact, from_user="2000", sdp=OFFER, on_event=failed, flow=binding.source)
        rejected = await failed.wait_for(Rejected)
        assert rejected.code == 503
        assert loop.time() - started < 1.0
    finally:
        await ua.close()


class _UdpPhone(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    async def next(self) -> Request | Response:
        while True:
            data, _ = await asyncio.wait_for(self.received.get(), 5)
            message = parse(data)
            if not (isinstance(message, Request) and message.method == "OPTIONS"):
                return message


async def test_call_reaches_a_udp_phone_at_its_registration_source():
    ua = _ua()
    await ua.start()
    dead = _dead_port(socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(_UdpPhone, local_addr=("127.0.0.1", 0))
    server = ("127.0.0.1", ua.port)
    try:
        local = transport.get_extra_info("sockname")[:2]
        transport.sendto(_register("UDP", dead, local), server)
        ok = await phone.next()
        assert isinstance(ok, Response) and ok.code == 200
        (binding,) = ua.registrar.bindings("1001")
        assert binding.source.port == local[1] != dead
        contact = binding.contact

        recorder = Recorder()
        call = ua.invite(
            contact, from_user="2000", sdp=OFFER, on_event=recorder, flow=binding.source
        )
        invite = await phone.next()  # at the REGISTER's source, not at the Contact port
        assert isinstance(invite, Request) and invite.method == "INVITE"
        assert str(invite.uri) == contact
        transport.sendto(_response(invite, 200, "OK", "ph2", contact), server)
        await recorder.wait_for(Answered)
        ack = await phone.next()
        assert isinstance(ack, Request) and ack.method == "ACK"
        call.bye()
        bye = await phone.next()
        assert isinstance(bye, Request) and bye.method == "BYE"
        transport.sendto(_response(bye, 200, "OK", "ph2", contact), server)
        await asyncio.sleep(0.05)
    finally:
        transport.close()
        await ua.close()


async def test_a_new_remote_target_is_followed_instead_of_the_flow():
    """RFC 3261 §12.2.1.1: when the 2xx names another contact, in-dialog requests go
    there, not over the registration's flow."""
    ua = _ua()
    await ua.start()
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(_UdpPhone, local_addr=("127.0.0.1", 0))
    other_transport, other = await loop.create_datagram_endpoint(
        _UdpPhone, local_addr=("127.0.0.1", 0)
    )
    server = ("127.0.0.1", ua.port)
    try:
        local = transport.get_extra_info("sockname")[:2]
        transport.sendto(_register("UDP", _dead_port(socket.SOCK_DGRAM), local), server)
        await phone.next()
        (binding,) = ua.registrar.bindings("1001")
        recorder = Recorder()
        ua.invite(
            binding.contact, from_user="2000", sdp=OFFER, on_event=recorder, flow=binding.source
        )
        invite = await phone.next()
        assert isinstance(invite, Request)
        elsewhere = other_transport.get_extra_info("sockname")[1]
        moved = f"sip:1001@127.0.0.1:{elsewhere}"
        transport.sendto(_response(invite, 200, "OK", "ph3", moved), server)
        await recorder.wait_for(Answered)
        ack = await other.next()
        assert isinstance(ack, Request) and ack.method == "ACK"
    finally:
        transport.close()
        other_transport.close()
        await ua.close()


async def test_a_closed_flow_is_not_redialled_mid_call():
    ua = _ua()
    await ua.start()
    try:
        phone = _Tcp(*await asyncio.open_connection("127.0.0.1", ua.port))
        local = phone.writer.get_extra_info("sockname")[:2]
        phone.send(_register("TCP", _dead_port(socket.SOCK_STREAM), local))
        await phone.next()
        (binding,) = ua.registrar.bindings("1001")
        recorder = Recorder()
        call = ua.invite(
            binding.contact, from_user="2000", sdp=OFFER, on_event=recorder, flow=binding.source
        )
        invite = await phone.next()
        assert isinstance(invite, Request)
        phone.send(_response(invite, 200, "OK", "ph4", binding.contact))
        await recorder.wait_for(Answered)
        await phone.next()  # ACK
        phone.writer.close()
        await asyncio.sleep(0.1)
        call.bye()  # cannot reach the phone: the BYE fails at once, no connect attempt
        await asyncio.sleep(0.2)
        assert not ua._transport._pending and not ua._transport._connections
        # The owner learns at once that the BYE could not be delivered.
        assert await recorder.wait_for(Terminated, 0.5) == Terminated("transport")
    finally:
        await ua.close()


def _invite_from_phone(contact_port: int, local: tuple[str, int], sdp: bytes) -> bytes:
    host, port = local
    return (
        f"INVITE sip:2000@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKinv1;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@127.0.0.1>;tag=ph9\r\n"
        "To: <sip:2000@127.0.0.1>\r\n"
        "Call-ID: flow-call-9\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:1001@127.0.0.1:{contact_port};transport=udp>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n"
    ).encode() + sdp


async def test_bye_to_a_registered_udp_phone_that_called_goes_to_its_source():
    """A phone behind NAT (Contact: its private address, here a dead port) registered
    and then calls: our in-dialog requests go where its requests come from."""
    invites: list[InboundInvite] = []

    def on_invite(invite: InboundInvite) -> None:
        invites.append(invite)
        invite.answer(ANSWER)

    ua = UserAgent(
        UAConfig(port=0, registrar=True, trusted_networks=("127.0.0.1",), **FAST),  # type: ignore[arg-type]
        on_invite,
    )
    await ua.start()
    dead = _dead_port(socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    transport, phone = await loop.create_datagram_endpoint(_UdpPhone, local_addr=("127.0.0.1", 0))
    server = ("127.0.0.1", ua.port)
    try:
        local = transport.get_extra_info("sockname")[:2]
        transport.sendto(_register("UDP", dead, local), server)
        assert (await phone.next()).code == 200  # type: ignore[union-attr]
        transport.sendto(_invite_from_phone(dead, local, OFFER), server)
        ok = await phone.next()
        while isinstance(ok, Response) and ok.code < 200:
            ok = await phone.next()
        assert isinstance(ok, Response) and ok.code == 200
        tag = ok.to_address.parameters["tag"]
        transport.sendto(
            (
                f"ACK sip:2000@127.0.0.1:{ua.port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bKack9;rport\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:1001@127.0.0.1>;tag=ph9\r\n"
                f"To: <sip:2000@127.0.0.1>;tag={tag}\r\nCall-ID: flow-call-9\r\n"
                "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            server,
        )
        await asyncio.sleep(0.1)
        invites[0].bye()
        bye = await phone.next()  # at the phone's source, not at its (dead) Contact
        assert isinstance(bye, Request) and bye.method == "BYE"
        assert str(bye.uri) == f"sip:1001@127.0.0.1:{dead};transport=udp"
    finally:
        transport.close()
        await ua.close()
