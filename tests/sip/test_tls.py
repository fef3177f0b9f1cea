"""SIP over TLS between two UserAgents with a self-signed certificate made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sip.aio.useragent import UAConfig, UserAgent
from sip.events import Answered, Confirmed, Rejected, Terminated

from .test_useragent import ANSWER, FAST, OFFER, Callee, Recorder

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 (key and cert in one PEM file)."""
    assert OPENSSL is not None
    directory = tmp_path_factory.mktemp("tls")
    pem = directory / "server.pem"
    subprocess.run(
        [
            OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(pem), "-out", str(directory / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    pem.write_text(pem.read_text() + (directory / "cert.pem").read_text())
    return pem


def tls_config(pem: Path, **kwargs: object) -> UAConfig:
    return UAConfig(port=0, tls_port=0, tls_cert=str(pem), tls_ca=str(pem), **FAST, **kwargs)  # type: ignore[arg-type]


async def test_call_over_tls(certificate: Path):
    callee = Callee(lambda invite: invite.answer(ANSWER))
    a = UserAgent(tls_config(certificate), lambda inv: inv.reject(603))
    b = UserAgent(tls_config(certificate), callee)
    await a.start()
    await b.start()
    try:
        assert b.tls_port and b.tls_port != b.port
        caller = Recorder()
        call = a.invite(
            f"sip:1234@127.0.0.1:{b.tls_port};transport=tls",
            from_user="alice",
            sdp=OFFER,
            on_event=caller,
        )
        assert await caller.wait_for(Answered) == Answered(ANSWER)
        await callee.recorder.wait_for(Confirmed)
        inbound = callee.invites[0]
        assert inbound.transport == "TLS"
        call.bye()
        assert await callee.recorder.wait_for(Terminated) == Terminated("bye")
    finally:
        await a.close()
        await b.close()


async def test_untrusted_certificate_fails_the_call(certificate: Path):
    callee = Callee(lambda invite: invite.answer(ANSWER))
    a = UserAgent(UAConfig(port=0, **FAST), lambda inv: inv.reject(603))  # system CAs only
    b = UserAgent(tls_config(certificate), callee)
    await a.start()
    await b.start()
    try:
        caller = Recorder()
        a.invite(
            f"sip:1234@127.0.0.1:{b.tls_port};transport=tls",
            from_user="alice",
            sdp=OFFER,
            on_event=caller,
        )
        assert await caller.wait_for(Rejected) == Rejected(503, "Service Unavailable")
        assert callee.invites == []
    finally:
        await a.close()
        await b.close()
