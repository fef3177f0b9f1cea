"""Kamailio standing in for a PBX: registrar (digest) and record-routing proxy on loopback.

Our UserAgent registers an AOR through Kamailio (per-user mode, digest), sipp calls that
AOR through Kamailio and our UA answers; our UA calls sipp through Kamailio (INVITE
challenged with 407 by the proxy). UDP and TCP. Kamailio runs with a generated config,
started and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Answered, Confirmed, Terminated
from tests.sip.test_sipp import Sipp, free_port, wait_bound
from tests.sip.test_useragent import ANSWER, OFFER, Recorder

KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None
)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(KAMAILIO is None, reason="kamailio not installed"),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed"),
]

USERS = {"1001": "pw1001", "1002": "pw1002"}

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
memdbg=5
memlog=5
children=2
tcp_children=2
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
alias="127.0.0.1:{port}"
{extra}
dns=no
rev_dns=no
use_dns_cache=off

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "auth.so"

modparam("usrloc", "db_mode", 0)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!sanity_check("17895", "7")) {{
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            route(RELAY);
        }}
        if (is_method("ACK") && t_check_trans()) {{
            t_relay();
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            route(RELAY);
        }}
        exit;
    }}
    if (t_precheck_trans()) {{
        t_check_trans();
        exit;
    }}
    t_check_trans();
    remove_hf("Route");
    if (is_method("REGISTER")) {{
        route(PASSWORD);
        if (!pv_www_authenticate("$td", "$var(pw)", "0")) {{
            www_challenge("$td", "0");
            exit;
        }}
        if ($au != $tU) {{
            sl_send_reply("403", "Forbidden");
            exit;
        }}
        consume_credentials();
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if (is_method("INVITE") && $fU != "sipp") {{
        route(PASSWORD);
        if (!pv_proxy_authenticate("$fd", "$var(pw)", "0")) {{
            proxy_challenge("$fd", "0");
            exit;
        }}
        consume_credentials();
    }}
    if (is_method("INVITE")) {{
        record_route();
    }}
    if ($rU == "sipp") {{
        if ($pr == "tls") {{
            $du = "sip:127.0.0.1:{sipp_port};transport=udp";
        }} else {{
            $du = "sip:127.0.0.1:{sipp_port};transport=" + $pr;
        }}
        route(RELAY);
    }}
    if (!lookup("location")) {{
        sl_send_reply("404", "Not Found");
        exit;
    }}
    route(RELAY);
}}

route[PASSWORD] {{
    $var(pw) = "";
{passwords}
}}

route[RELAY] {{
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}
"""

UAC_VIA_PROXY = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac through a record-routing proxy">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
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
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="300"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      [routes]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


class Kamailio:
    def __init__(self, workdir: Path, sipp_port: int, extra: str = "") -> None:
        self.workdir = workdir
        self.extra = extra  # more global settings (listen, loadmodule, modparam)
        self.port = free_port()
        self.sipp_port = sipp_port
        self.process: asyncio.subprocess.Process | None = None
        self.log = workdir / "kamailio.log"

    async def start(self) -> None:
        assert KAMAILIO is not None
        passwords = "\n".join(
            f'    if ($au == "{user}" || $fU == "{user}") {{ $var(pw) = "{pw}"; }}'
            for user, pw in USERS.items()
        )
        config = self.workdir / "kamailio.cfg"
        config.write_text(
            CONFIG.format(
                port=self.port, sipp_port=self.sipp_port, passwords=passwords, extra=self.extra
            )
        )
        rundir = self.workdir / "run"
        rundir.mkdir(exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            KAMAILIO,
            "-f",
            str(config),
            "-DD",
            "-E",
            "-Y",
            str(rundir),
            "-m",
            "32",
            "-M",
            "4",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.log.open("wb"),
            stderr=asyncio.subprocess.STDOUT,
        )
        await wait_bound(self.port)
        await wait_bound(self.port, tcp=True)
        await asyncio.sleep(0.2)
        if self.process.returncode is not None:
            raise RuntimeError("kamailio exited:\n" + self.log.read_text(errors="replace"))

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()  # our kamailio only, by its PID; it stops its children
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.fixture
async def kamailio(tmp_path: Path) -> AsyncIterator[Kamailio]:
    sipp_port = free_port()
    runner = Kamailio(tmp_path, sipp_port)
    await runner.start()
    yield runner
    await runner.stop()


@pytest.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    await runner.stop()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


async def _until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), timeout)


async def call_sipp_through(ua: UserAgent, target: str, kamailio: Any, sipp: Any) -> None:
    """Our UA calls sipp at `target` through Kamailio (which challenges: 1001/pw1001), is
    answered, hangs up; sipp must exit 0 (it got the ACK and the BYE)."""
    recorder = Recorder()
    call = ua.invite(
        target, from_user="1001", sdp=OFFER, credentials=("1001", "pw1001"), on_event=recorder
    )
    try:
        answered = await recorder.wait_for(Answered, 10)
    except TimeoutError:
        pytest.fail(f"{recorder.events}\n{_tail(kamailio.log)}")
    assert isinstance(answered, Answered) and answered.sdp
    call.bye()
    code, output = await sipp.wait()
    assert code == 0, output + _tail(kamailio.log)



@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_through_kamailio_and_take_a_call_from_sipp(
    kamailio: Kamailio, sipp: Sipp, tmp_path: Path, transport: str
):
    recorder = Recorder()
    invites: list[InboundInvite] = []

    def on_invite(invite: InboundInvite) -> None:
        invites.append(invite)
        invite.set_event_handler(recorder)
        invite.ringing()
        invite.answer(ANSWER)

    ua = UserAgent(UAConfig(port=0, t1=0.1), on_invite)
    await ua.start()
    try:
        registrar = f"sip:127.0.0.1:{kamailio.port};transport={transport}"
        bad = ua.register("sip:1002@127.0.0.1", registrar, ("1002", "wrong"))
        reg = ua.register("sip:1001@127.0.0.1", registrar, ("1001", "pw1001"), expires=120)
        try:
            await _until(lambda: reg.registered and bad.state.value == "failed")
        except TimeoutError:
            pytest.fail(f"{reg.state} {reg.code} {bad.state}\n{_tail(kamailio.log)}")
        assert 0 < reg.expires <= 120

        scenario = tmp_path / "uac_via_proxy.xml"
        scenario.write_text(UAC_VIA_PROXY)
        await sipp.start(
            "-sf",
            str(scenario),
            "-t",
            "u1" if transport == "udp" else "t1",
            "-s",
            "1001",
            "-p",
            str(free_port()),
            f"127.0.0.1:{kamailio.port}",
        )
        code, output = await sipp.wait()
        assert code == 0, output + _tail(kamailio.log)
        assert await recorder.wait_for(Terminated) == Terminated("bye")
        assert Confirmed() in recorder.events
        assert invites[0].request_user == "1001" and invites[0].caller_user == "sipp"
        assert invites[0].transport == transport.upper()

        reg.stop()
        await reg.wait_stopped(5)
        assert reg.code == 200
    finally:
        await ua.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_call_sipp_through_kamailio_with_proxy_auth(
    kamailio: Kamailio, sipp: Sipp, transport: str
):
    sipp_transport = "u1" if transport == "udp" else "t1"
    await sipp.start("-sn", "uas", "-t", sipp_transport, "-p", str(kamailio.sipp_port))
    await wait_bound(kamailio.sipp_port, tcp=transport == "tcp")
    ua = UserAgent(UAConfig(port=0, t1=0.1), lambda invite: invite.reject(603))
    await ua.start()
    try:
        await call_sipp_through(
            ua, f"sip:sipp@127.0.0.1:{kamailio.port};transport={transport}", kamailio, sipp
        )
    finally:
        await ua.close()
