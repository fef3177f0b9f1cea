"""dtmf-relay bodies, P-Asserted-Identity and X- header pass-through helpers."""

from __future__ import annotations

import pytest

from sip.dtmf_relay import DtmfRelay, parse_dtmf_relay
from sip.identity import asserted_identity, asserted_identity_header, caller_identity, pass_through
from sip.messages import parse


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"Signal=5\r\nDuration=160\r\n", DtmfRelay("5", 160)),
        (b"signal= #\nduration = 250", DtmfRelay("#", 250)),
        (b"Signal=a\r\n", DtmfRelay("A", 160)),
        (b"Signal=10\r\nDuration=x\r\n", DtmfRelay("*", 160)),
        (b"Signal=11\r\nDuration=99999999\r\n", DtmfRelay("#", 10000)),
        # str.isdigit() is true for Latin-1 superscript digits; int() is not
        (b"Signal=5\r\nDuration=\xb2\r\n", DtmfRelay("5", 160)),
        (b"Signal=7\r\nDuration=1\xb9\xb3\r\n", DtmfRelay("7", 160)),
        (b"Signal=55\r\n", None),
        (b"Duration=100\r\n", None),
        (b"\xff\x00garbage", None),
        (b"Signal=1" + b" " * 2000, None),
    ],
)
def test_parse_dtmf_relay(body: bytes, expected: DtmfRelay | None):
    assert parse_dtmf_relay(body) == expected


def test_dtmf_relay_round_trip():
    assert parse_dtmf_relay(DtmfRelay("9", 120).encode()) == DtmfRelay("9", 120)


INVITE = (
    b"INVITE sip:100@gw SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\n"
    b'From: "Spoofed" <sip:666@evil>;tag=1\r\n'
    b"To: <sip:100@gw>\r\n"
    b"Call-ID: pai\r\n"
    b"CSeq: 1 INVITE\r\n"
    b'P-Asserted-Identity: "Alice Real" <sip:+4930123@pbx>, <tel:+4930123>\r\n'
    b"X-Customer: 42\r\n"
    b"X-Other: no\r\n"
    b"X-Bad: a\x01b\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_asserted_identity_only_from_trusted_peers():
    request = parse(INVITE)
    assert asserted_identity(request) == ("+4930123", "Alice Real")
    assert caller_identity(request, trusted=True) == ("+4930123", "Alice Real")
    assert caller_identity(request, trusted=False) == ("666", "Spoofed")


def test_asserted_identity_header_escapes_display():
    assert asserted_identity_header("1001", "gw", 'A "B"') == (
        "P-Asserted-Identity",
        '"A \\"B\\"" <sip:1001@gw>',
    )


def test_pass_through_only_configured_x_headers():
    request = parse(INVITE)
    assert pass_through(request, ["X-Customer", "X-Bad", "Via", "x-missing"]) == [
        ("X-Customer", "42")
    ]
