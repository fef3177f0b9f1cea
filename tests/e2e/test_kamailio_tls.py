"""Kamailio as registrar and proxy over TLS (its tls module) with a test CA made by openssl.

Our UserAgent (tls_ca = the test CA, tls_verify on) registers an AOR through Kamailio's
TLS listener with digest, and sipp (UDP) calls that AOR: Kamailio relays the INVITE to
our UA's TLS listener. Our UA calls sipp through Kamailio over TLS (407 proxy auth),
Kamailio relaying to sipp over UDP. With a CA that did not sign Kamailio's certificate
the REGISTER fails. Kamailio runs with a generated config, started and stopped by PID.

Outside CI a missing kamailio, kamailio-tls-modules, sipp or openssl skips these tests;
in CI (CI set) it fails them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Confirmed, Terminated
from tests.e2e.test_kamailio import (
    KAMAILIO,
    UAC_VIA_PROXY,
    Kamailio,
    _tail,
    _until,
    call_sipp_through,
)
from tests.sip.test_sipp import Sipp, free_port, wait_bound
from tests.sip.test_useragent import ANSWER, Recorder

TLS_MODULE = "/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so"
OPENSSL = shutil.which("openssl")
FAST = dict(t1=0.1)

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _programs() -> None:
    """Skip when a program is missing, except in CI where that is an error."""
    missing = [
        f"{what} (Debian package {package})"
        for what, package, present in (
            ("kamailio", "kamailio", KAMAILIO is not None),
            (TLS_MODULE, "kamailio-tls-modules", os.path.exists(TLS_MODULE)),
            ("sipp", "sip-tester", shutil.which("sipp") is not None),
            ("openssl", "openssl", OPENSSL is not None),
        )
        if not present
    ]
    if missing:
        message = "not installed: " + ", ".join(missing) + " (make test installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _openssl(*args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=30)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return key, cert


class Certificates:
    """A test CA, a server certificate it signed for 127.0.0.1 / localhost, and an
    unrelated CA that signed nothing we present."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        ca_key, self.ca = _ca(directory, "test-ca")
        _, self.other_ca = _ca(directory, "other-ca")
        self.key = directory / "server.key"
        self.cert = directory / "server.pem"
        csr = directory / "server.csr"
        extensions = directory / "server.ext"
        extensions.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n"
        )
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=127.0.0.1", "-keyout", str(self.key), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key),
            "-set_serial", "2", "-days", "2", "-extfile", str(extensions),
            "-out", str(self.cert),
        )  # fmt: skip


TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""


# sipp's built-in uas does not echo Record-Route, so our ACK and BYE would bypass the
# proxy; this one does, and they are routed through Kamailio over TLS too.
UAS_RECORD_ROUTE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uas behind a record-routing proxy">
  <recv request="INVITE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <timewait milliseconds="200"/>
</scenario>
"""


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path / "tls")


class KamailioTLS(Kamailio):
    def __init__(self, workdir: Path, sipp_port: int, tls_port: int, extra: str) -> None:
        super().__init__(workdir, sipp_port, extra)
        self.tls_port = tls_port


@pytest.fixture
async def kamailio(tmp_path: Path, certificates: Certificates) -> AsyncIterator[KamailioTLS]:
    tls_port = free_port()
    tls_cfg = tmp_path / "tls.cfg"
    tls_cfg.write_text(TLS_CFG.format(key=certificates.key, cert=certificates.cert))
    extra = (
        "enable_tls=yes\n"
        f"listen=tls:127.0.0.1:{tls_port}\n"
        f'alias="127.0.0.1:{tls_port}"\n'
        'loadmodule "tls.so"\n'
        f'modparam("tls", "config", "{tls_cfg}")\n'
    )
    runner = KamailioTLS(tmp_path, free_port(), tls_port, extra)
    try:
        await runner.start()
        await wait_bound(tls_port, tcp=True)
        yield runner
    finally:
        await runner.stop()


@pytest.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    await runner.stop()


def _ua_config(certificates: Certificates, ca: Path) -> UAConfig:
    # Our TLS listener (Kamailio relays INVITEs to the registered Contact there) uses the
    # server certificate; Kamailio's certificate is checked against `ca`.
    return UAConfig(
        port=0,
        tls_port=0,
        tls_cert=str(certificates.cert),
        tls_key=str(certificates.key),
        tls_ca=str(ca),
        tls_verify=True,
        **FAST,  # type: ignore[arg-type]
    )


async def test_register_through_kamailio_over_tls_and_take_a_call_from_sipp(
    kamailio: KamailioTLS, sipp: Sipp, certificates: Certificates, tmp_path: Path
):
    recorder = Recorder()
    invites: list[InboundInvite] = []

    def on_invite(invite: InboundInvite) -> None:
        invites.append(invite)
        invite.set_event_handler(recorder)
        invite.ringing()
        invite.answer(ANSWER)

    ua = UserAgent(_ua_config(certificates, certificates.ca), on_invite)
    await ua.start()
    try:
        registrar = f"sip:127.0.0.1:{kamailio.tls_port};transport=tls"
        bad = ua.register("sip:1002@127.0.0.1", registrar, ("1002", "wrong"))
        reg = ua.register("sip:1001@127.0.0.1", registrar, ("1001", "pw1001"), expires=120)
        try:
            await _until(lambda: reg.registered and bad.state.value == "failed")
        except TimeoutError:
            pytest.fail(f"{reg.state} {reg.code} {bad.state}\n{_tail(kamailio.log)}")
        assert 0 < reg.expires <= 120
        assert bad.code == 401

        scenario = tmp_path / "uac_via_proxy.xml"
        scenario.write_text(UAC_VIA_PROXY)
        await sipp.start(
            "-sf", str(scenario), "-t", "u1", "-s", "1001", "-p", str(free_port()),
            f"127.0.0.1:{kamailio.port}",
        )  # fmt: skip
        code, output = await sipp.wait()
        assert code == 0, output + _tail(kamailio.log)
        assert await recorder.wait_for(Terminated) == Terminated("bye")
        assert Confirmed() in recorder.events
        assert invites[0].request_user == "1001" and invites[0].caller_user == "sipp"
        assert invites[0].transport == "TLS"  # Kamailio -> our UA over TLS

        reg.stop()
        await reg.wait_stopped(5)
        assert reg.code == 200
    finally:
        await ua.close()


async def test_call_sipp_through_kamailio_over_tls_with_proxy_auth(
    kamailio: KamailioTLS, sipp: Sipp, certificates: Certificates, tmp_path: Path
):
    scenario = tmp_path / "uas_record_route.xml"
    scenario.write_text(UAS_RECORD_ROUTE)
    await sipp.start("-sf", str(scenario), "-t", "u1", "-p", str(kamailio.sipp_port))
    await wait_bound(kamailio.sipp_port)
    ua = UserAgent(_ua_config(certificates, certificates.ca), lambda invite: invite.reject(603))
    await ua.start()
    try:
        # ACK and BYE follow the Record-Route: Kamailio over TLS, then UDP to sipp.
        await call_sipp_through(
            ua, f"sip:sipp@127.0.0.1:{kamailio.tls_port};transport=tls", kamailio, sipp
        )
    finally:
        await ua.close()


async def test_register_fails_when_kamailio_cert_is_not_signed_by_our_ca(
    kamailio: KamailioTLS, certificates: Certificates, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="sip.aio.transport")
    ua = UserAgent(_ua_config(certificates, certificates.other_ca), lambda inv: inv.reject(603))
    await ua.start()
    try:
        registrar = f"sip:127.0.0.1:{kamailio.tls_port};transport=tls"
        reg = ua.register("sip:1001@127.0.0.1", registrar, ("1001", "pw1001"), expires=120)
        try:
            await _until(lambda: reg.state.value == "failed", 5)
        except TimeoutError:
            pytest.fail(f"{reg.state} {reg.code}\n{_tail(kamailio.log)}")
        assert reg.code == 503 and not reg.registered  # TLS handshake refused: transport error
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    finally:
        await ua.close()
