"""UAS digest: challenges, MD5/SHA-256 checks, HA1 storage, stale nonces, nonce counts."""

from __future__ import annotations

import itertools

import pytest

from sip.auth import DigestClient, compute_ha1, credentials_header, pick_challenge
from sip.auth_server import BOTH_ALGORITHMS, DigestServer, Secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def server(clock: Clock, lookup=None, **kwargs) -> DigestServer:  # type: ignore[no-untyped-def]
    counter = itertools.count(1)
    return DigestServer(
        "gw",
        lookup or {"1001": "secret"}.get,
        key=b"k" * 32,
        clock=clock,
        random_hex=lambda n: f"{next(counter):0{2 * n}x}",
        **({"algorithms": BOTH_ALGORITHMS} | kwargs),
    )


def answer(
    challenge: str,
    user: str = "1001",
    password: str = "secret",
    cnonce: str = "c1",
    client: DigestClient | None = None,
) -> str:
    client = client or DigestClient(user, password)
    parsed = pick_challenge([challenge])
    assert parsed is not None
    credentials = client.answer(parsed, method="REGISTER", uri="sip:gw", cnonce=cnonce)
    return credentials_header(credentials)


@pytest.mark.parametrize("index, algorithm", [(0, "SHA-256"), (1, "MD5")])
def test_challenges_in_preference_order_and_both_verify(index: int, algorithm: str):
    clock = Clock()
    s = server(clock)
    challenges = s.challenges()
    assert "algorithm=SHA-256" in challenges[0] and "algorithm=MD5" in challenges[1]
    assert 'qop="auth"' in challenges[0] and 'realm="gw"' in challenges[0]
    result = s.verify([answer(challenges[index])], "REGISTER")
    assert result.ok and result.username == "1001"
    assert f"algorithm={algorithm}" in challenges[index]


def test_wrong_password_unknown_user_wrong_method():
    clock = Clock()
    s = server(clock)
    (challenge, _) = s.challenges()
    wrong = s.verify([answer(challenge, password="nope")], "REGISTER")
    assert not wrong.ok and wrong.present and not wrong.stale
    assert not s.verify([answer(challenge, user="9999")], "REGISTER").ok
    assert not s.verify([answer(challenge)], "INVITE").ok
    assert not s.verify([], "REGISTER").present
    assert not s.verify(["Digest garbage"], "REGISTER").ok


def test_ha1_storage():
    clock = Clock()
    secret = Secret(
        ha1_md5=compute_ha1("1001", "gw", "pw", "MD5"),
        ha1_sha256=compute_ha1("1001", "gw", "pw", "SHA-256"),
    )
    s = server(clock, {"1001": secret}.get)
    for index in (0, 1):
        challenge = s.challenges()[index]  # a fresh nonce each time
        assert s.verify([answer(challenge, password="pw")], "REGISTER").ok


def test_stale_nonce_and_forged_nonce():
    clock = Clock()
    s = server(clock, nonce_ttl=300)
    (challenge, _) = s.challenges()
    header = answer(challenge)
    clock.now += 301
    result = s.verify([header], "REGISTER")
    assert result.stale and not result.ok
    assert "stale=true" in s.challenges(stale=True)[0]
    forged = challenge.replace('nonce="', 'nonce="0')
    assert not s.verify([answer(forged)], "REGISTER").ok


def test_nonce_count_must_increase():
    clock = Clock()
    s = server(clock)
    (challenge, _) = s.challenges()
    client = DigestClient("1001", "secret")
    first = answer(challenge, client=client)
    assert s.verify([first], "REGISTER").ok
    assert not s.verify([first], "REGISTER").ok  # replayed nc=1
    second = answer(challenge, client=client, cnonce="c2")  # nc=2
    assert s.verify([second], "REGISTER").ok
