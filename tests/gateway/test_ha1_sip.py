"""Users stored with HA1 values only, through the SIP stack's registrar and digest
checks, in memory (sans-I/O): a REGISTER client core against a registrar core whose
digest lookup is the gateway directory's `sip_secret` (what gateway/app.py wires to the
user agent). Covers SHA-256, which baresip (the e2e phone) does not do."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest

from gateway.config import User
from gateway.directory import Directory
from sip.auth_server import DigestServer, Secret
from sip.core import CoreConfig, UserAgentCore
from sip.effects import Transmit
from sip.peer import Peer
from sip.registrar import Registrar
from sip.registration import RegistrationUpdate
from sip.timers import TimerSettings

REALM = "gw.example"
CLIENT = Peer("UDP", "127.0.0.1", 5070)
SERVER = Peer("UDP", "127.0.0.1", 5060)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


DIRECTORY = Directory(
    [
        User("carol", "", "1003", "Carol", ha1_md5=md5(f"1003:{REALM}:carol-pw")),
        User("dave", "", "1004", "Dave", ha1_sha256=sha256(f"1004:{REALM}:dave-pw")),
        User("erin", "", "1005", "Erin", ha1_md5=md5(f"1005:{REALM}:erin-pw"),
             ha1_sha256=sha256(f"1005:{REALM}:erin-pw")),
        User("frank", "frank-pw", "1006", "Frank"),
    ],
    realm=REALM,
)


class Net:
    """A client core and a registrar core exchanging datagrams instantly."""

    def __init__(self, algorithms: tuple[str, ...]) -> None:
        counter = itertools.count(1)

        def hexes(n: int) -> str:
            return f"{next(counter):0{2 * n}x}"

        clock = lambda: 0.0  # noqa: E731
        self.registrar = Registrar(clock)
        digest = DigestServer(REALM, DIRECTORY.sip_secret, key=b"k" * 32, clock=clock,
                              random_hex=hexes, algorithms=algorithms)
        timers = TimerSettings()
        self.server = UserAgentCore(
            CoreConfig(port=5060, timers=timers), hexes, digest=digest, registrar=self.registrar
        )
        self.client = UserAgentCore(CoreConfig(port=5070, timers=timers), hexes)
        self.updates: list[RegistrationUpdate] = []
        self.sent: list[bytes] = []

    def apply(self, side: str, effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, Transmit):
                if side == "client":
                    self.sent.append(effect.data)
                    self.apply("server", self.server.receive(effect.data, CLIENT))
                else:
                    self.apply("client", self.client.receive(effect.data, SERVER))
            elif isinstance(effect, RegistrationUpdate):
                self.updates.append(effect)

    def register(self, number: str, password: str) -> str:
        _op, effects = self.client.register(
            f"sip:{number}@127.0.0.1", "sip:127.0.0.1:5060", (number, password), expires=600
        )
        self.apply("client", effects)
        return self.updates[-1].state.value


@pytest.mark.parametrize(
    ("algorithms", "number", "password"),
    [
        (("SHA-256",), "1004", "dave-pw"),  # only ha1_sha256 stored
        (("SHA-256",), "1005", "erin-pw"),  # both stored, SHA-256 challenged
        (("MD5",), "1005", "erin-pw"),
        (("MD5",), "1003", "carol-pw"),  # only ha1_md5 (what baresip does, see e2e)
        (("SHA-256",), "1006", "frank-pw"),  # a password user, unchanged
    ],
)
def test_ha1_only_users_register(algorithms: tuple[str, ...], number: str, password: str):
    net = Net(algorithms)
    assert net.register(number, password) == "registered"
    assert net.registrar.lookup(number) == [f"sip:{number}@127.0.0.1:5070"]
    assert f"algorithm={algorithms[0]}".encode() in net.sent[-1]


@pytest.mark.parametrize(
    ("algorithms", "number", "password"),
    [
        (("SHA-256",), "1004", "wrong"),
        (("MD5",), "1003", "wrong"),
        (("MD5",), "1004", "dave-pw"),  # no ha1_md5 stored: MD5 cannot be checked
        (("SHA-256",), "1003", "carol-pw"),  # no ha1_sha256 stored
        (("SHA-256",), "1999", "x"),  # unknown number
    ],
)
def test_ha1_only_users_refused(algorithms: tuple[str, ...], number: str, password: str):
    net = Net(algorithms)
    assert net.register(number, password) == "failed"
    assert net.updates[-1].code == 403 and len(net.sent) == 2  # challenged, answered, 403
    assert net.registrar.lookup(number) == []


def test_sip_secret() -> None:
    assert DIRECTORY.sip_secret("1003") == Secret(None, md5(f"1003:{REALM}:carol-pw"), None)
    assert DIRECTORY.sip_secret("1006") == Secret("frank-pw")
    assert DIRECTORY.sip_secret("1999") is None
    # HA1 values answer for the number (the digest user name) in the SIP realm.
    secret = DIRECTORY.sip_secret("1005")
    assert secret is not None
    assert secret.ha1("1005", REALM, "SHA-256") == sha256(f"1005:{REALM}:erin-pw")
    assert secret.ha1("1005", REALM, "MD5-sess") == md5(f"1005:{REALM}:erin-pw")
