"""Registrar bindings with a fake clock: expiry, 423, unregister, wildcard, ordering."""

from __future__ import annotations

from sip.messages import parse
from sip.peer import Peer
from sip.registrar import Registrar

PHONE = Peer("UDP", "127.0.0.1", 5080)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def register(
    contact: str = "<sip:1001@127.0.0.1:5080>",
    expires: str | None = "600",
    cseq: int = 1,
    call_id: str = "reg-1",
):  # type: ignore[no-untyped-def]
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKr",
        "From: <sip:1001@127.0.0.1>;tag=a",
        "To: <sip:1001@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    request = parse(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())
    return request


def test_register_lookup_expire():
    clock = Clock()
    r = Registrar(clock)
    outcome = r.register(register(), PHONE)
    assert outcome.code == 200
    assert outcome.headers == [("Contact", "<sip:1001@127.0.0.1:5080>;expires=600")]
    assert r.lookup("1001") == ["sip:1001@127.0.0.1:5080"]
    assert r.bindings("1001")[0].source == PHONE
    clock.now = 599
    assert r.lookup("1001")
    clock.now = 601
    assert r.lookup("1001") == []


def test_refresh_unregister_and_query():
    clock = Clock()
    r = Registrar(clock)
    r.register(register(), PHONE)
    assert r.register(register(expires="1200", cseq=2), PHONE).code == 200
    clock.now = 700
    assert r.lookup("1001")
    query = r.register(register(contact="", cseq=3), PHONE)
    assert query.code == 200 and query.headers[0][1].endswith("expires=500")
    assert r.register(register(expires="0", cseq=4), PHONE).code == 200
    assert r.lookup("1001") == []


def test_contact_expires_param_and_caps():
    clock = Clock()
    r = Registrar(clock, max_expires=3600)
    contact = "<sip:1001@127.0.0.1:5080>;expires=99999, <sip:1001@127.0.0.1:5082>;q=0.5"
    outcome = r.register(register(contact=contact, expires="300"), PHONE)
    assert outcome.code == 200
    expires = {b.contact: b.expires_at for b in r.bindings("1001")}
    assert expires == {"sip:1001@127.0.0.1:5080": 3600, "sip:1001@127.0.0.1:5082": 300}
    assert r.lookup("1001")[0] == "sip:1001@127.0.0.1:5080"  # q=1 before q=0.5


def test_interval_too_brief_is_423_with_min_expires():
    r = Registrar(Clock(), min_expires=60)
    outcome = r.register(register(expires="30"), PHONE)
    assert outcome.code == 423 and outcome.headers == [("Min-Expires", "60")]
    assert r.lookup("1001") == []


def test_wildcard_removes_all_only_with_expires_0():
    r = Registrar(Clock())
    r.register(register(), PHONE)
    assert r.register(register(contact="*", expires="600", cseq=2), PHONE).code == 400
    assert r.register(register(contact="*", expires="0", cseq=3), PHONE).code == 200
    assert r.lookup("1001") == []


def test_out_of_order_cseq_is_500():
    r = Registrar(Clock())
    r.register(register(cseq=5), PHONE)
    assert r.register(register(cseq=4), PHONE).code == 500
    assert r.register(register(cseq=5, call_id="other"), PHONE).code == 200
