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


async def test_call_reaches_a_tls_phone_over_its_registration_connection(certificate: Path):
    """A phone registered over TLS (Contact: a port where nothing listens) is called over
    the TLS connection its REGISTER came on."""
    import asyncio
    import socket
    import ssl

    from sipmessage import Request, Response

    from .test_useragent_flow import _dead_port, _register, _response, _Tcp

    ua = UserAgent(
        tls_config(certificate, registrar=True, trusted_networks=("127.0.0.1",)),
        lambda invite: None,
    )
    await ua.start()
    try:
        assert ua.tls_port is not None
        context = ssl.create_default_context(cafile=str(certificate))
        phone = _Tcp(*await asyncio.open_connection("127.0.0.1", ua.tls_port, ssl=context))
        local = phone.writer.get_extra_info("sockname")[:2]
        phone.send(_register("TLS", _dead_port(socket.SOCK_STREAM), local))
        ok = await phone.next()
        assert isinstance(ok, Response) and ok.code == 200
        (binding,) = ua.registrar.bindings("1001")
        assert binding.source.transport == "TLS"
        recorder = Recorder()
        call = ua.invite(
            binding.contact, from_user="2000", sdp=OFFER, on_event=recorder, flow=binding.source
        )
        invite = await phone.next()
        assert isinstance(invite, Request) and invite.method == "INVITE"
        assert invite.via[0].transport == "TLS"
        phone.send(_response(invite, 200, "OK", "tls1", binding.contact))
        assert await recorder.wait_for(Answered) == Answered(ANSWER)
        ack = await phone.next()
        assert isinstance(ack, Request) and ack.method == "ACK"
        call.bye()
        bye = await phone.next()
        assert isinstance(bye, Request) and bye.method == "BYE"
        phone.writer.close()
    finally:
        await ua.close()
