"""A real SIP phone (baresip) registers with digest to the gateway's built-in registrar
(DESIGN §6: no PBX needed) and talks to a web user both ways; baresip sends a 440 Hz
sine (its ausine source), so the web client checks what it hears."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.audio import dominant_frequency, rms_dbfs
from tests.e2e.client import JsonV1Client
from tests.e2e.conftest import free_port, stop_process
from tests.e2e.test_calls import check_tone

BARESIP = shutil.which("baresip")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(BARESIP is None, reason="baresip missing")]

CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip_port}
sip_trans_def\t\tudp
audio_source\t\tausine,440
ausrc_srate\t\t48000
ausrc_channels\t\t2
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\tausine.so
module\t\t\tsndfile.so
snd_path\t\t{dump}
module_app\t\taccount.so
module_app\t\tmenu.so
rtp_ports\t\t{rtp}-{rtp_end}
"""


class Phone:
    def __init__(
        self,
        workdir: Path,
        gateway_sip_port: int,
        number: str,
        password: str,
        transport: str = "udp",
    ):
        self.dir = workdir / f"baresip-{number}"
        for n in range(2, 100):  # a second phone of the same number gets its own directory
            if not self.dir.exists():
                break
            self.dir = workdir / f"baresip-{number}-{n}"
        self.dir.mkdir()
        self.sip_port = free_port()
        rtp = free_port(tcp=False, span=10) & ~1
        (self.dir / "config").write_text(
            CONFIG.format(
                sip_port=self.sip_port, workdir=self.dir, rtp=rtp, rtp_end=rtp + 9, dump=self.dir
            )
        )
        (self.dir / "accounts").write_text(
            f"<sip:{number}@127.0.0.1:{gateway_sip_port};transport={transport}>"
            f";auth_pass={password};answermode=auto;regint=600\n"
        )
        self.log_path = self.dir / "baresip.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *commands: str) -> None:
        assert BARESIP is not None
        args = [BARESIP, "-f", str(self.dir), "-s"]
        for command in commands:
            args += ["-e", command]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def heard(self) -> tuple[np.ndarray, int]:
        """What baresip decoded from the far end (its sndfile module's dump)."""
        dumps = sorted(self.dir.glob("dump-*-dec*.wav")) or sorted(self.dir.glob("dump-*.wav"))
        assert dumps, f"no sndfile dump in {self.dir}: {list(self.dir.iterdir())}"
        decoded = [d for d in dumps if "dec" in d.name] or dumps
        with wave.open(str(decoded[-1])) as w:
            rate, channels = w.getframerate(), w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm.reshape(-1, channels)[:, 0], rate

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while text not in self.log():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"baresip never logged {text!r}:\n{self.log()[-4000:]}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=3.0)


@pytest.fixture
def phones(e2e_dir: Path):
    made: list[Phone] = []

    def make(gateway, number: str, password: str, transport: str = "udp") -> Phone:
        phone = Phone(e2e_dir, gateway.sip_port, number, password, transport)
        made.append(phone)
        return phone

    yield make
    for phone in made:
        phone.stop()


async def test_web_user_calls_registered_phone(gateway, clients, phones):
    phone = phones(gateway, "1002", "bob-secret")
    phone.start()
    await phone.wait_log("200 OK")  # REGISTER answered after the digest challenge
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("1002", freq=1000.0)  # bob is not on the web: his phone rings
    await call.wait_state("active", timeout=20)
    await check_tone(call, 440.0, what="baresip's sine at the web client")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    phone.stop()  # closes its dump files
    pcm, rate = phone.heard()
    tail = pcm[rate:]  # skip the first second
    assert tail.size > rate, f"baresip decoded only {pcm.size / rate:.1f} s"
    assert rms_dbfs(tail) > -40, f"baresip heard silence ({rms_dbfs(tail):.1f} dBFS)"
    assert abs(dominant_frequency(tail, rate) - 1000.0) <= 20, dominant_frequency(tail, rate)


async def test_web_user_calls_phone_registered_over_tcp(gateway, clients, phones):
    """baresip registers over TCP: the call reaches it over that connection (the flow its
    REGISTER came on, RFC 5626 style) and audio flows both ways."""
    phone = phones(gateway, "1002", "bob-secret", transport="tcp")
    phone.start()
    await phone.wait_log("200 OK")
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("1002", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 440.0, what="baresip's sine over its TCP registration")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    phone.stop()
    pcm, rate = phone.heard()
    tail = pcm[rate:]
    assert rms_dbfs(tail) > -40, f"baresip heard silence ({rms_dbfs(tail):.1f} dBFS)"
    assert abs(dominant_frequency(tail, rate) - 1000.0) <= 20, dominant_frequency(tail, rate)
    assert "INVITE" in phone.log()


async def test_registered_phone_calls_web_user(gateway, clients, phones):
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    phone = phones(gateway, "1002", "bob-secret")
    phone.start("/dial 1001")
    incoming = await alice.wait_incoming(timeout=20)
    assert incoming.start_message["remoteAddress"]["dialString"] == "1002"
    await incoming.accept()
    await incoming.answer()
    await incoming.wait_state("active", timeout=20)
    await check_tone(incoming, 440.0, what="baresip's sine, incoming")
    await incoming.hangup()
    await incoming.wait_state("terminated", timeout=10)


async def test_wrong_password_gets_no_registration(gateway, phones):
    phone = phones(gateway, "1002", "not-bobs-password")
    phone.start()
    await phone.wait_log("403")


async def test_refused_refer_joins_the_two_sip_parties(gateway, sipp, clients, phones):
    """Attended transfer of a sipp call (which refuses REFER) to a baresip call: the gateway
    joins the two SIP legs itself (DESIGN §3); both of Alice's calls end `redirected`, and
    baresip hears its own 440 Hz sine echoed back by sipp through the gateway."""
    from tests.e2e.test_transfer import transfer

    far = sipp.scenario(
        "uas_refer_refuse_bye",
        "uas_refer_refuse_bye.xml",
        None,
        port=gateway.pbx_port,
        extra=["-rtp_echo"],
    )
    sipp.wait_bound(far, gateway.pbx_port)
    phone = phones(gateway, "1002", "bob-secret")
    phone.start()
    await phone.wait_log("200 OK")
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    to_sipp = await alice.dial("5555", freq=1000.0)
    await to_sipp.wait_state("active", timeout=20)
    to_phone = await alice.dial("1002", freq=1000.0)
    await to_phone.wait_state("active", timeout=20)

    await transfer(to_sipp, transferIdentifier=to_phone.identifier)
    for call in (to_sipp, to_phone):
        ended = await call.wait_state("terminated", timeout=15)
        assert ended.get("reason") == "redirected", ended
    # sipp hangs up 5 s after refusing the REFER; the gateway passes the BYE to baresip.
    assert await far.wait(20) == 0, far.logs()[-3000:]
    await phone.wait_log("BYE sip:")
    phone.stop()
    pcm, rate = phone.heard()
    tail = pcm[-3 * rate :]  # the last seconds: the joined call
    assert rms_dbfs(tail) > -40, f"baresip heard silence after the join ({rms_dbfs(tail):.1f})"
    assert abs(dominant_frequency(tail, rate) - 440.0) <= 20, dominant_frequency(tail, rate)


# A user stored without a password: only ha1_md5 = MD5("1003:gw.example:carol-secret"),
# the hash `webrtc-gateway ha1 --number 1003 --realm gw.example` prints.
HA1_REALM = "gw.example"
HA1_ONLY_USER = f"""
[sip]
realm = "{HA1_REALM}"
trusted_networks = []  # the INVITE from baresip must pass digest too

[[users]]
username = "carol"
number = "1003"
ha1_md5 = "{hashlib.md5(f"1003:{HA1_REALM}:carol-secret".encode()).hexdigest()}"
"""


@pytest.mark.parametrize("gateway", [HA1_ONLY_USER], indirect=True)
async def test_ha1_only_user_registers_and_calls(gateway, clients, phones):
    """baresip, knowing carol's password, registers with digest to the built-in registrar
    that has only her ha1_md5, then calls a web user; a wrong password gets 403."""
    wrong = phones(gateway, "1003", "not-carols-password")
    wrong.start()
    await wrong.wait_log("403")
    wrong.stop()
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    phone = phones(gateway, "1003", "carol-secret")
    phone.start("/dial 1001")
    await phone.wait_log("1003@127.0.0.1: {0/UDP/v4} 200 OK")  # registered, after digest
    incoming = await alice.wait_incoming(timeout=20)
    assert incoming.start_message["remoteAddress"]["dialString"] == "1003"
    await incoming.accept()
    await incoming.answer()
    await incoming.wait_state("active", timeout=20)
    await check_tone(incoming, 440.0, what="baresip's sine from the HA1-only user")
    await incoming.hangup()
    await incoming.wait_state("terminated", timeout=10)
    # Both the REGISTER and the INVITE (nobody is trusted) were challenged and answered.
    sent = phone.log()
    assert sent.count('Authorization: Digest username="1003", realm="gw.example"') >= 2, sent
