"""Dialog creation, route sets, CSeq handling and in-dialog requests (RFC 3261 §12-13)."""

from __future__ import annotations

from sipmessage import Request, Response

from sip.dialog import Dialog, DialogId
from sip.messages import encode, parse

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKaaa\r\n"
    b"Max-Forwards: 70\r\n"
    b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"To: <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.1:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKaaa\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"To: <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4:5070;transport=tcp>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_uac_dialog_from_2xx():
    invite, ok = parse(INVITE), parse(OK)
    assert isinstance(invite, Request) and isinstance(ok, Response)
    dialog = Dialog.from_uac(invite, ok)
    assert dialog.id == DialogId("a84b4c76e66710", "1928301774", "a6c85cf")
    assert str(dialog.remote_target) == "sip:bob@192.0.2.4:5070;transport=tcp"
    # The UAC reverses the Record-Route list (§12.1.2).
    assert [str(a.uri) for a in dialog.route_set] == [
        "sip:p2.example.com;lr",
        "sip:p1.example.com;lr",
    ]
    assert str(dialog.next_hop()) == "sip:p2.example.com;lr"


def test_ack_for_2xx_keeps_cseq_number_and_bye_increments():
    invite, ok = parse(INVITE), parse(OK)
    assert isinstance(invite, Request) and isinstance(ok, Response)
    dialog = Dialog.from_uac(invite, ok)
    ack = dialog.create_ack(314159)
    assert ack.method == "ACK" and str(ack.cseq) == "314159 ACK"
    assert str(ack.uri) == "sip:bob@192.0.2.4:5070;transport=tcp"
    assert ack.headers.getlist("Route") == [
        "<sip:p2.example.com;lr>",
        "<sip:p1.example.com;lr>",
    ]
    assert ack.headers["To"] == "<sip:bob@biloxi.example.com>;tag=a6c85cf"
    assert ack.headers["From"] == '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774'
    assert ack.headers["Max-Forwards"] == "70"
    bye = dialog.create_request("BYE")
    assert str(bye.cseq) == "314160 BYE"
    assert str(dialog.create_request("BYE").cseq) == "314161 BYE"
    ack.headers.add("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnew")
    assert parse(encode(ack)).headers["Content-Length"] == "0"


def test_uas_dialog_from_invite():
    invite = parse(INVITE)
    assert isinstance(invite, Request)
    dialog = Dialog.from_uas(invite, "localtag")
    assert dialog.id == DialogId("a84b4c76e66710", "localtag", "1928301774")
    # The UAS keeps the Record-Route order.
    assert [str(a.uri) for a in dialog.route_set] == [
        "sip:p1.example.com;lr",
        "sip:p2.example.com;lr",
    ]
    assert str(dialog.remote_target) == "sip:alice@10.0.0.1:5060"
    bye = dialog.create_request("BYE")
    assert bye.headers["From"] == "<sip:bob@biloxi.example.com>;tag=localtag"
    assert bye.headers["To"] == '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774'
    assert bye.cseq.sequence == 1


def test_remote_cseq_must_increase():
    invite = parse(INVITE)
    assert isinstance(invite, Request)
    dialog = Dialog.from_uas(invite, "t")
    from sipmessage import CSeq

    assert not dialog.accept_remote_cseq(CSeq(314159, "BYE"))
    assert dialog.accept_remote_cseq(CSeq(314159, "ACK"))
    assert dialog.accept_remote_cseq(CSeq(314160, "BYE"))
    assert not dialog.accept_remote_cseq(CSeq(314100, "INFO"))
