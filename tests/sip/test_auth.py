"""Digest computations against the RFC 2617 and RFC 7616 worked examples."""

from __future__ import annotations

from sipmessage import AuthChallenge, AuthCredentials

from sip.auth import (
    DigestChallenge,
    DigestClient,
    build_credentials,
    check_credentials,
    credentials_header,
    digest_response,
    pick_challenge,
)


def test_rfc2617_md5_qop_auth():
    assert (
        digest_response(
            username="Mufasa",
            password="Circle Of Life",
            realm="testrealm@host.com",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            method="GET",
            uri="/dir/index.html",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


RFC7616 = dict(
    username="Mufasa",
    password="Circle of Life",
    realm="http-auth@example.org",
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    method="GET",
    uri="/dir/index.html",
    qop="auth",
    nc="00000001",
    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
)


def test_rfc7616_md5():
    assert digest_response(**RFC7616) == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc7616_sha256():
    assert (
        digest_response(**RFC7616, algorithm="SHA-256")
        == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    )


def test_no_qop_rfc2069_style():
    # H(H(A1):nonce:H(A2)) with the RFC 2617 example inputs.
    import hashlib

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    ha1 = md5("Mufasa:testrealm@host.com:Circle Of Life")
    ha2 = md5("GET:/dir/index.html")
    assert digest_response(
        username="Mufasa",
        password="Circle Of Life",
        realm="testrealm@host.com",
        nonce="n",
        method="GET",
        uri="/dir/index.html",
    ) == md5(f"{ha1}:n:{ha2}")


def test_challenge_parsing_and_credentials_header():
    challenge = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    digest = DigestChallenge.from_header(challenge)
    assert digest.qop == ("auth", "auth-int")
    assert digest.algorithm == "MD5"
    creds = build_credentials(
        digest,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    assert creds.parameters is not None
    assert creds.parameters["response"] == "6629fae49393a05397450978507c4ef1"
    assert creds.parameters["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    header = credentials_header(creds)
    assert header.startswith('Digest username="Mufasa", realm="testrealm@host.com"')
    assert "qop=auth, nc=00000001" in header
    assert 'cnonce="0a4f113b"' in header
    # What we write must parse back and verify on the UAS side.
    parsed = AuthCredentials.parse(header)
    assert check_credentials(
        header,
        method="GET",
        password="Circle Of Life",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
    )
    assert check_credentials(
        parsed,
        method="GET",
        password="Circle Of Life",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
    )
    assert not check_credentials(
        parsed,
        method="GET",
        password="wrong",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
    )


def test_pick_challenge_skips_unsupported():
    chosen = pick_challenge(
        [
            'Basic realm="x"',
            'Digest realm="r", nonce="n", algorithm=SHA-512-256',
            'Digest realm="r", nonce="n2"',
        ]
    )
    assert chosen is not None and chosen.nonce == "n2"
    assert pick_challenge(["garbage"]) is None


def test_client_counts_nonce_uses():
    client = DigestClient("alice", "pw")
    challenge = AuthChallenge.parse('Digest realm="r", nonce="n1", qop="auth"')
    first = client.answer(challenge, method="INVITE", uri="sip:1@h", cnonce="c1")
    second = client.answer(challenge, method="INVITE", uri="sip:1@h", cnonce="c2")
    assert first.parameters is not None and second.parameters is not None
    assert first.parameters["nc"] == "00000001"
    assert second.parameters["nc"] == "00000002"
