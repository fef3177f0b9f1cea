"""REGISTER client against our own registrar core, wired together in memory with one
fake clock: digest, refresh before expiry, back-off after failures, unregister."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sip.auth_server import DigestServer
from sip.core import CoreConfig, UserAgentCore
from sip.effects import CancelTimer, StartTimer, TimerKey, Transmit
from sip.messages import parse
from sip.peer import Peer
from sip.registrar import Registrar
from sip.registration import RegistrationUpdate, refresh_delay, retry_delay
from sip.timers import TimerSettings

CLIENT = Peer("UDP", "127.0.0.1", 5070)
SERVER = Peer("UDP", "127.0.0.1", 5060)
AOR = "sip:1001@127.0.0.1"
REGISTRAR = "sip:127.0.0.1:5060"


class Net:
    """Two cores exchanging datagrams instantly; `down` makes the server drop everything,
    `server_reply` (a function of the request bytes) replaces the server's answer."""

    def __init__(self, *, min_expires: int = 60, passwords: dict[str, str] | None = None):
        self.now = 0.0
        counter = itertools.count(1)

        def hexes(n: int) -> str:
            return f"{next(counter):0{2 * n}x}"

        clock = lambda: self.now  # noqa: E731
        self.registrar = Registrar(clock, min_expires=min_expires)
        digest = DigestServer(
            "gw",
            (passwords if passwords is not None else {"1001": "pw"}).get,
            key=b"k" * 32,
            clock=clock,
            random_hex=hexes,
        )
        timers = TimerSettings()
        self.server = UserAgentCore(
            CoreConfig(port=5060, timers=timers), hexes, digest=digest, registrar=self.registrar
        )
        self.client = UserAgentCore(CoreConfig(port=5070, timers=timers), hexes)
        self.timers: dict[tuple[str, TimerKey], float] = {}
        self.updates: list[RegistrationUpdate] = []
        self.requests: list[bytes] = []
        self.down = False
        self.server_reply: Any = None

    def apply(self, side: str, effects: list[Any]) -> None:
        for effect in effects:
            match effect:
                case Transmit(_, data):
                    if side == "client":
                        self.requests.append(data)
                        if self.down:
                            continue
                        if self.server_reply is not None:
                            reply = self.server_reply(data)
                            if reply:
                                self.apply("client", self.client.receive(reply, SERVER))
                            continue
                        self.apply("server", self.server.receive(data, CLIENT))
                    else:
                        self.apply("client", self.client.receive(data, SERVER))
                case StartTimer(key, delay):
                    self.timers[(side, key)] = self.now + delay
                case CancelTimer(key):
                    self.timers.pop((side, key), None)
                case RegistrationUpdate():
                    self.updates.append(effect)

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = sorted((at, k) for k, at in self.timers.items() if at <= target + 1e-9)
            if not due:
                break
            at, (side, key) = due[0]
            del self.timers[(side, key)]
            self.now = at
            core = self.client if side == "client" else self.server
            self.apply(side, core.timer_fired(key))
        self.now = target

    def register(self, credentials: tuple[str, str] | None = ("1001", "pw"), **kw: Any) -> int:
        op, effects = self.client.register(AOR, REGISTRAR, credentials, **kw)
        self.apply("client", effects)
        return op

    def states(self) -> list[str]:
        return [u.state.value for u in self.updates]


def test_register_with_digest_binds_the_contact():
    net = Net()
    net.register(expires=600)
    assert net.states() == ["registered"]
    assert net.updates[-1].expires == 600 and net.updates[-1].code == 200
    assert net.registrar.lookup("1001") == ["sip:1001@127.0.0.1:5070"]
    first, second = (parse(r) for r in net.requests)
    assert first.headers.get("Authorization") is None and second.headers.get("Authorization")
    assert first.call_id == second.call_id and second.cseq.sequence == first.cseq.sequence + 1
    assert str(first.uri) == REGISTRAR and str(first.to_address.uri) == AOR
    assert first.headers["Expires"] == "600"
    assert first.headers["Contact"] == "<sip:1001@127.0.0.1:5070>"


def test_refresh_before_expiry_keeps_the_binding():
    net = Net()
    net.register(expires=120)
    for _ in range(10):
        net.advance(60)
        assert net.registrar.lookup("1001"), net.now
    refreshes = [parse(r) for r in net.requests]
    assert len(refreshes) >= 10
    assert all(r.call_id == refreshes[0].call_id for r in refreshes)
    seqs = [r.cseq.sequence for r in refreshes]
    assert seqs == sorted(set(seqs))
    assert set(net.states()) == {"registered"}


def test_granted_expiry_from_the_registrar_drives_the_refresh():
    net = Net()
    net.registrar.max_expires = 100
    net.register(expires=3600)
    assert net.updates[-1].expires == 100
    count = len(net.requests)
    net.advance(refresh_delay(100) + 0.1)
    assert len(net.requests) > count


def test_423_interval_too_brief_is_followed():
    net = Net(min_expires=300)
    net.register(expires=60)
    assert net.states() == ["registered"] and net.updates[-1].expires == 300


def test_wrong_password_fails_and_retries_with_backoff():
    net = Net(passwords={"1001": "other"})
    net.register(expires=600)
    assert net.states() == ["failed"]
    assert net.updates[-1].code in (401, 403)
    first_delay = net.updates[-1].retry_in
    assert 5 <= first_delay <= 10
    net.advance(first_delay + 0.01)
    assert net.states()[-2:] == ["registering", "failed"]
    assert net.updates[-1].retry_in > first_delay * 0.9  # doubled (with jitter)


def test_server_down_then_back_up():
    net = Net()
    net.down = True
    net.register(expires=600)
    net.advance(32.5)  # Timer F: 32 s
    assert net.states() == ["failed"] and net.updates[-1].code == 408
    net.down = False
    net.advance(net.updates[-1].retry_in + 1)
    assert net.states()[-1] == "registered"
    assert net.registrar.lookup("1001")


def test_503_retry_after_is_honoured():
    def unavailable(data: bytes) -> bytes:
        request = parse(data)
        lines = [f"Via: {v}" for v in request.headers.getlist("Via")]
        lines += [f"From: {request.headers['From']}", f"To: {request.headers['To']};tag=x"]
        lines += [f"Call-ID: {request.call_id}", f"CSeq: {request.headers['CSeq']}"]
        lines += ["Retry-After: 300", "Content-Length: 0"]
        return ("SIP/2.0 503 Service Unavailable\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()

    net = Net()
    net.server_reply = unavailable
    net.register()
    assert net.updates[-1].code == 503 and net.updates[-1].retry_in >= 300


def test_unregister_removes_the_binding():
    net = Net()
    op = net.register(expires=600)
    net.apply("client", net.client.unregister(op))
    assert net.states() == ["registered", "unregistered"]
    assert net.registrar.lookup("1001") == []
    last = parse(net.requests[-1])
    assert last.headers["Expires"] == "0"
    net.advance(3600)
    assert net.states()[-1] == "unregistered" and len(net.updates) == 2


def test_unregister_while_the_first_register_is_in_flight():
    net = Net()
    net.down = True
    op = net.register()
    net.apply("client", net.client.unregister(op))
    net.advance(40)
    assert net.states() == ["unregistered"]
    net.advance(3600)
    assert len(net.updates) == 1


def test_unregister_when_never_registered_reports_at_once():
    net = Net(passwords={})
    op = net.register()
    assert net.states() == ["failed"]
    net.apply("client", net.client.unregister(op))
    assert net.states() == ["failed", "unregistered"]
    count = len(net.requests)
    net.advance(3600)
    assert len(net.requests) == count  # no retry after stop


def test_trunk_mode_contact_user_and_extra_headers():
    net = Net()
    op, effects = net.client.register(
        "sip:1001@127.0.0.1",
        REGISTRAR,
        ("1001", "pw"),
        contact_user="gateway",
        headers=[("X-Trunk", "main")],
    )
    net.apply("client", effects)
    assert net.registrar.lookup("1001") == ["sip:gateway@127.0.0.1:5070"]
    assert parse(net.requests[0]).headers["X-Trunk"] == "main"
    assert net.client.registration(op) is not None


def test_tcp_registrar_gets_tcp_contact():
    net = Net()
    op, effects = net.client.register(AOR, "sip:127.0.0.1:5060;transport=tcp", None)
    sent = [e for e in effects if isinstance(e, Transmit)]
    assert sent[0].peer == Peer("TCP", "127.0.0.1", 5060)
    assert parse(sent[0].data).headers["Contact"] == "<sip:1001@127.0.0.1:5070;transport=tcp>"


@pytest.mark.parametrize("bad", ["tel:+1", "sip:", "http://x"])
def test_bad_uris_raise(bad: str):
    net = Net()
    with pytest.raises(ValueError):
        net.client.register(bad, REGISTRAR)


def test_backoff_values():
    assert retry_delay(1, 0) == 5.0
    assert retry_delay(1, 255) == 10.0
    assert retry_delay(20, 255) == 1800.0
    assert retry_delay(1, 0, retry_after=120) == 120.0
    assert refresh_delay(600) == 540 and refresh_delay(60) == 30 and refresh_delay(1) == 1.0
