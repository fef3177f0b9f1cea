"""Admission in the core: REGISTER with digest into the registrar, the INVITE access
policy (trusted networks or digest, else 403), per-source rate limits."""

from __future__ import annotations

import itertools

from sip.access import AccessPolicy, RateLimiter
from sip.auth import DigestClient, credentials_header, pick_challenge
from sip.auth_server import BOTH_ALGORITHMS, DigestServer
from sip.core import CoreConfig, UserAgentCore
from sip.peer import Peer
from sip.registrar import Registrar
from sip.timers import TimerSettings

from .test_core import INVITE, CoreHarness

PHONE = Peer("UDP", "127.0.0.1", 5080)
STRANGER = Peer("UDP", "192.0.2.66", 5060)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def harness(
    *,
    trusted: tuple[str, ...] | None = ("127.0.0.0/8",),
    rate: RateLimiter | None = None,
    clock: Clock | None = None,
) -> tuple[CoreHarness, Registrar]:
    h = CoreHarness()
    clock = clock or Clock()
    counter = itertools.count(1000)

    def hexes(n: int) -> str:
        return f"{next(counter):0{2 * n}x}"

    digest = DigestServer(
        "gw",
        {"1001": "pw"}.get,
        key=b"x" * 32,
        clock=clock,
        random_hex=hexes,
        algorithms=BOTH_ALGORITHMS,
    )
    registrar = Registrar(clock)
    h.core = UserAgentCore(
        CoreConfig(host="127.0.0.1", port=5070, user_agent="test-ua", timers=TimerSettings()),
        hexes,
        digest=digest,
        registrar=registrar,
        policy=AccessPolicy.from_strings(trusted) if trusted is not None else None,
        rate_limiter=rate,
    )
    return h, registrar


def register(cseq: int, authorization: str = "", user: str = "1001") -> bytes:
    lines = [
        "REGISTER sip:127.0.0.1:5070 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKreg{cseq};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@127.0.0.1>;tag=r1",
        f"To: <sip:{user}@127.0.0.1>",
        "Call-ID: reg-call",
        f"CSeq: {cseq} REGISTER",
        "Contact: <sip:1001@127.0.0.1:5080;transport=udp>",
        "Expires: 600",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def authorize(challenges: list[str], method: str, uri: str, password: str = "pw") -> str:
    challenge = pick_challenge(challenges)
    assert challenge is not None
    credentials = DigestClient("1001", password).answer(
        challenge, method=method, uri=uri, cnonce="cn"
    )
    return credentials_header(credentials)


def test_register_challenged_then_bound():
    h, registrar = harness()
    h.receive(register(1))
    challenge = h.last()
    assert challenge.code == 401
    values = challenge.headers.getlist("WWW-Authenticate")
    assert "SHA-256" in values[0] and "MD5" in values[1]
    h.receive(register(2, authorize(values, "REGISTER", "sip:127.0.0.1:5070")))
    ok = h.last()
    assert ok.code == 200 and "expires=600" in ok.headers["Contact"]
    assert registrar.lookup("1001") == ["sip:1001@127.0.0.1:5080;transport=udp"]


def test_register_wrong_password_or_other_user_is_403():
    h, registrar = harness()
    h.receive(register(1))
    values = h.last().headers.getlist("WWW-Authenticate")
    h.receive(register(2, authorize(values, "REGISTER", "sip:x", password="bad")))
    assert h.last().code == 403
    h.receive(register(3))
    values = h.last().headers.getlist("WWW-Authenticate")
    h.receive(register(4, authorize(values, "REGISTER", "sip:x"), user="1002"))
    assert h.last().code == 403
    assert registrar.lookup("1001") == [] and registrar.lookup("1002") == []


def test_invite_from_trusted_network_is_delivered_unchallenged():
    h, _ = harness()
    h.receive(INVITE, PHONE)
    assert len(h.calls) == 1 and h.calls[0].authenticated_user is None


def test_invite_from_untrusted_source_is_challenged_then_delivered():
    h, _ = harness(trusted=("10.0.0.0/8",))
    h.receive(INVITE, STRANGER)
    assert h.last().code == 401 and h.calls == []
    values = h.last().headers.getlist("WWW-Authenticate")
    retry = INVITE.replace(b"CSeq: 10 INVITE", b"CSeq: 11 INVITE").replace(
        b"branch=z9hG4bKphone1", b"branch=z9hG4bKin2"
    )
    auth = authorize(values, "INVITE", "sip:5555@127.0.0.1:5070")
    retry = retry.replace(
        b"Max-Forwards: 70", f"Max-Forwards: 70\r\nAuthorization: {auth}".encode()
    )
    h.receive(retry, STRANGER)
    assert len(h.calls) == 1 and h.calls[0].authenticated_user == "1001"


def test_invite_with_wrong_credentials_is_403_and_never_delivered():
    h, _ = harness(trusted=())
    h.receive(INVITE, STRANGER)
    values = h.last().headers.getlist("WWW-Authenticate")
    auth = authorize(values, "INVITE", "sip:5555@127.0.0.1:5070", password="guess")
    bad = INVITE.replace(b"CSeq: 10", b"CSeq: 11").replace(
        b"Max-Forwards: 70", f"Max-Forwards: 70\r\nAuthorization: {auth}".encode()
    )
    bad = bad.replace(b"branch=z9hG4bKphone1", b"branch=z9hG4bKin3")
    h.receive(bad, STRANGER)
    assert h.last().code == 403 and h.calls == []


def test_no_policy_accepts_anyone():
    h, _ = harness(trusted=None)
    h.receive(INVITE, STRANGER)
    assert len(h.calls) == 1


def test_rate_limit_gives_503_with_retry_after():
    clock = Clock()
    h, _ = harness(rate=RateLimiter(1.0, 2, clock), clock=clock)
    for n in range(3):
        h.receive(register(n + 1))
    assert [m.code for m in h.messages()] == [401, 401, 503]
    assert h.last().headers["Retry-After"] == "1"
    clock.now += 1.0
    h.receive(register(9))
    assert h.last().code == 401


def test_policy_networks():
    policy = AccessPolicy.from_strings(["10.0.0.0/8", "192.0.2.7", "::1"])
    assert policy.is_trusted("10.1.2.3") and policy.is_trusted("192.0.2.7")
    assert policy.is_trusted("::1") and policy.is_trusted("::ffff:10.0.0.1")
    assert not policy.is_trusted("192.0.2.8") and not policy.is_trusted("example.com")


def test_oversized_message_gets_513_and_too_many_headers_400():
    h, _ = harness(trusted=None)
    big = INVITE.replace(b"Max-Forwards: 70", b"X-Pad: " + b"a" * 70000 + b"\r\nMax-Forwards: 70")
    h.receive(big)
    assert h.sent[-1][2].startswith(b"SIP/2.0 513 ")
    many = INVITE.replace(b"Max-Forwards: 70", b"X-H: 1\r\n" * 300 + b"Max-Forwards: 70")
    h.receive(many)
    assert h.sent[-1][2].startswith(b"SIP/2.0 400 ")
    assert h.calls == []
    h.receive(INVITE)  # a normal one still works
    assert len(h.calls) == 1
