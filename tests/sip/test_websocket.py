"""SIP over WebSocket (RFC 7118): the sans-I/O framing and the UserAgent's
attach_websocket hook with an in-process fake WebSocket pair (REGISTER, then an
INVITE/200/ACK and a BYE from our side)."""

from __future__ import annotations

import asyncio

import pytest

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Confirmed, Terminated
from sip.messages import parse
from sip.websocket import WebSocketFramingError, decode_message, encode_message

from .test_useragent import ANSWER, OFFER, Recorder

CLIENT = ("192.0.2.10", 51234)


def test_decode_and_encode():
    text = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1\r\n\r\n"
    assert decode_message(text) == text.encode()
    assert decode_message("\r\n\r\n") is None  # keep-alive
    assert decode_message(b"\r\n" + text.encode()) == text.encode()
    with pytest.raises(WebSocketFramingError):
        decode_message("x" * 70000)
    assert encode_message(b"SIP/2.0 200 OK\r\n\r\n") == "SIP/2.0 200 OK\r\n\r\n"
    assert encode_message(b"\xff\xfe") == b"\xff\xfe"


class FakeSocket:
    """The server half of a WebSocket: what the UA sends lands in `outbox`."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False

    async def send(self, message: str) -> None:
        await self.outbox.put(message)

    def close(self) -> None:
        self.closed = True

    async def next(self) -> str:
        return await asyncio.wait_for(self.outbox.get(), 5)


def ws_request(method: str, cseq: int, *, to_tag: str = "", body: bytes = b"") -> str:
    # As JsSIP writes them: .invalid Via host, no rport value, transport=ws Contact,
    # and no Content-Length (RFC 7118 does not need it).
    lines = [
        f"{method} sip:{'1000' if method != 'REGISTER' else ''}@127.0.0.1 SIP/2.0".replace(
            ":@", ":"
        ),
        f"Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK{method.lower()}{cseq};rport",
        "Max-Forwards: 69",
        "From: <sip:alice@127.0.0.1>;tag=jssip1",
        f"To: <sip:{'1000' if method != 'REGISTER' else 'alice'}@127.0.0.1>"
        + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: ws-call-1" if method != "REGISTER" else "Call-ID: ws-reg-1",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>",
    ]
    if method == "REGISTER":
        lines.append("Expires: 600")
    if body:
        lines.append("Content-Type: application/sdp")
    return "\r\n".join(lines) + "\r\n\r\n" + body.decode()


async def test_register_and_call_over_websocket():
    recorder = Recorder()
    invites: list[InboundInvite] = []

    def on_invite(invite: InboundInvite) -> None:
        invites.append(invite)
        invite.set_event_handler(recorder)
        invite.answer(ANSWER)

    ua = UserAgent(UAConfig(port=0, registrar=True), on_invite)
    await ua.start()
    sock = FakeSocket()
    try:
        conn = ua.attach_websocket(sock.send, sock.close, CLIENT)
        conn.receive(ws_request("REGISTER", 1))
        ok = parse((await sock.next()).encode())
        assert ok.code == 200 and ok.cseq.method == "REGISTER"  # type: ignore[union-attr]
        via = ok.via[0]
        assert via.transport == "WS" and via.parameters["received"] == CLIENT[0]
        assert via.parameters["rport"] == str(CLIENT[1])

        conn.receive(ws_request("INVITE", 1, body=OFFER))
        trying = parse((await sock.next()).encode())
        assert trying.code == 100  # type: ignore[union-attr]
        answer = parse((await sock.next()).encode())
        assert answer.code == 200 and answer.body == ANSWER  # type: ignore[union-attr]
        assert answer.headers["Contact"].endswith(";transport=ws>")
        tag = answer.to_address.parameters["tag"] or ""
        assert invites[0].transport == "WS" and invites[0].source == CLIENT
        conn.receive(ws_request("ACK", 1, to_tag=tag))
        await recorder.wait_for(Confirmed)

        invites[0].bye()
        bye = parse((await sock.next()).encode())
        assert bye.method == "BYE"  # type: ignore[union-attr]
        assert bye.via[0].transport == "WS"
        assert str(bye.uri) == "sip:alice@df7jal23ls0d.invalid;transport=ws"
        conn.receive(
            "SIP/2.0 200 OK\r\n"
            + "".join(f"Via: {v}\r\n" for v in bye.headers.getlist("Via"))
            + f"From: {bye.headers['From']}\r\nTo: {bye.headers['To']}\r\n"
            + f"Call-ID: {bye.call_id}\r\nCSeq: {bye.headers['CSeq']}\r\n\r\n"
        )
        await asyncio.sleep(0.05)
        conn.closed()
        assert not sock.closed  # closed by the peer, not by us
    finally:
        await ua.close()


async def test_send_to_a_closed_websocket_is_a_transport_error():
    recorder = Recorder()
    invites: list[InboundInvite] = []

    def on_invite(invite: InboundInvite) -> None:
        invites.append(invite)
        invite.set_event_handler(recorder)

    ua = UserAgent(UAConfig(port=0), on_invite)
    await ua.start()
    sock = FakeSocket()
    try:
        conn = ua.attach_websocket(sock.send, sock.close, CLIENT)
        conn.receive(ws_request("INVITE", 1, body=OFFER))
        await sock.next()  # 100 Trying
        conn.closed()
        invites[0].answer(ANSWER)  # cannot reach the client any more
        assert await recorder.wait_for(Terminated) == Terminated("transport")
    finally:
        await ua.close()


async def test_call_to_a_websocket_registered_user_goes_over_its_websocket():
    """A JsSIP-style contact (sip:alice@xyz.invalid;transport=ws) cannot be dialled; the
    INVITE and the dialog's requests go over the WebSocket the REGISTER came on."""
    ua = UserAgent(UAConfig(port=0, registrar=True), lambda invite: None)
    await ua.start()
    sock = FakeSocket()
    try:
        conn = ua.attach_websocket(sock.send, sock.close, CLIENT)
        conn.receive(ws_request("REGISTER", 1))
        assert parse((await sock.next()).encode()).code == 200  # type: ignore[union-attr]
        (binding,) = ua.registrar.bindings("alice")
        assert binding.source.transport == "WS" and binding.source.address == CLIENT
        recorder = Recorder()
        call = ua.invite(
            binding.contact, from_user="bob", sdp=OFFER, on_event=recorder, flow=binding.source
        )
        invite = parse((await sock.next()).encode())
        assert invite.method == "INVITE"  # type: ignore[union-attr]
        assert str(invite.uri) == "sip:alice@df7jal23ls0d.invalid;transport=ws"  # type: ignore[union-attr]
        assert invite.via[0].transport == "WS"  # type: ignore[union-attr]
        conn.receive(
            "SIP/2.0 200 OK\r\n"
            + "".join(f"Via: {v}\r\n" for v in invite.headers.getlist("Via"))
            + f"From: {invite.headers['From']}\r\nTo: {invite.headers['To']};tag=ws1\r\n"
            + f"Call-ID: {invite.call_id}\r\nCSeq: {invite.headers['CSeq']}\r\n"
            + "Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>\r\n"
            + f"Content-Type: application/sdp\r\nContent-Length: {len(ANSWER)}\r\n\r\n"
            + ANSWER.decode()
        )
        ack = parse((await sock.next()).encode())
        assert ack.method == "ACK"  # type: ignore[union-attr]
        call.bye()
        bye = parse((await sock.next()).encode())
        assert bye.method == "BYE"  # type: ignore[union-attr]
    finally:
        await ua.close()
