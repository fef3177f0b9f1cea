"""Matching messages to transactions (RFC 3261 §17.1.3, §17.2.3) and stateless errors."""

from __future__ import annotations

from sip.effects import Transmit
from sip.messages import parse
from sip.peer import Peer
from sip.timers import TimerSettings
from sip.transaction_layer import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionLayer,
)

PHONE = Peer("UDP", "192.0.2.7", 40000)


def request(method: str, branch: str = "z9hG4bK1", cseq_method: str | None = None) -> bytes:
    return (
        f"{method} sip:1@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.9:5060;branch={branch};rport\r\n"
        "From: <sip:a@b>;tag=f\r\nTo: <sip:1@127.0.0.1>\r\nCall-ID: c\r\n"
        f"CSeq: 1 {cseq_method or method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_new_request_then_retransmission_absorbed():
    layer = TransactionLayer(TimerSettings())
    (first,) = layer.receive(request("INVITE"), PHONE)
    assert isinstance(first, RequestReceived) and first.key is not None
    # received/rport filled in from the source (RFC 3581)
    via = first.request.via[0]
    assert via.parameters["received"] == "192.0.2.7" and via.parameters["rport"] == "40000"
    assert layer.receive(request("INVITE"), PHONE) == []
    response = parse(b"SIP/2.0 180 Ringing\r\n" + request("INVITE").split(b"\r\n", 1)[1])
    effects = layer.respond(first.key, response)  # type: ignore[arg-type]
    (sent,) = effects
    assert isinstance(sent, Transmit) and sent.peer == PHONE  # rport: back to the source
    (again,) = layer.receive(request("INVITE"), PHONE)
    assert again == Transmit(PHONE, sent.data)


def test_cancel_is_its_own_transaction_matching_the_invite():
    layer = TransactionLayer(TimerSettings())
    (invite,) = layer.receive(request("INVITE"), PHONE)
    (cancel,) = layer.receive(request("CANCEL"), PHONE)
    assert isinstance(invite, RequestReceived) and isinstance(cancel, RequestReceived)
    assert cancel.key != invite.key
    assert cancel.key is not None
    assert layer.invite_key_for_cancel(cancel.key) == invite.key


def test_ack_for_2xx_has_new_branch_and_reaches_tu():
    layer = TransactionLayer(TimerSettings())
    layer.receive(request("INVITE"), PHONE)
    (ack,) = layer.receive(request("ACK", branch="z9hG4bKother"), PHONE)
    assert isinstance(ack, RequestReceived) and ack.key is None


def test_ack_for_non2xx_absorbed_by_invite_transaction():
    layer = TransactionLayer(TimerSettings())
    (invite,) = layer.receive(request("INVITE"), PHONE)
    assert isinstance(invite, RequestReceived) and invite.key is not None
    busy = parse(b"SIP/2.0 486 Busy Here\r\n" + request("INVITE").split(b"\r\n", 1)[1])
    layer.respond(invite.key, busy)  # type: ignore[arg-type]
    effects = layer.receive(request("ACK"), PHONE)
    assert not any(isinstance(e, RequestReceived) for e in effects)


def test_responses_match_client_transactions_by_branch_and_method():
    layer = TransactionLayer(TimerSettings())
    outgoing = parse(request("OPTIONS", branch="z9hG4bKout"))
    key, _ = layer.send_request(outgoing, PHONE)  # type: ignore[arg-type]
    ok = b"SIP/2.0 200 OK\r\n" + request("OPTIONS", branch="z9hG4bKout").split(b"\r\n", 1)[1]
    (delivered,) = [e for e in layer.receive(ok, PHONE) if isinstance(e, ResponseReceived)]
    assert isinstance(delivered, ResponseReceived) and delivered.key == key
    other = ok.replace(b"z9hG4bKout", b"z9hG4bKelse")
    assert layer.receive(other, PHONE) == []
    stray = b"SIP/2.0 200 OK\r\n" + request("INVITE", branch="z9hG4bKgone").split(b"\r\n", 1)[1]
    (late,) = layer.receive(stray, PHONE)
    assert isinstance(late, StrayResponse)


def test_stateless_400_and_drops():
    layer = TransactionLayer(TimerSettings())
    broken = request("INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE")
    (reply,) = layer.receive(broken, PHONE)
    assert isinstance(reply, Transmit) and reply.data.startswith(b"SIP/2.0 400 Bad Request")
    assert b"Call-ID: c\r\n" in reply.data
    assert layer.receive(broken.replace(b"Call-ID: c\r\n", b""), PHONE) == []
    assert layer.receive(b"\x00\x01garbage", PHONE) == []
    assert layer.receive(b"SIP/2.0 200 OK\r\nVia: nope\r\n\r\n", PHONE) == []
    assert layer.receive(request("INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"), PHONE)
