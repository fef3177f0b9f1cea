"""Interop with a real SIP phone (baresip) on loopback: it registers to the built-in
registrar with digest, calls us with digest (untrusted source), is called at its
registered contact (auto-answer), takes hold/resume re-INVITEs, follows a REFER, and
unregisters (Expires: 0) when it quits."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Answered, Confirmed, Terminated

from .test_sipp import free_port
from .test_useragent import OFFER, Recorder
from .test_useragent_in_dialog import Results

BARESIP = shutil.which("baresip")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(BARESIP is None, reason="baresip not installed")]

CONFIG = """\
poll_method		epoll
sip_listen		127.0.0.1:{sip_port}
sip_trans_def		udp
audio_source		ausine,440
ausrc_srate		48000
ausrc_channels		2
module_path		/usr/lib/baresip/modules
module			g711.so
module			ausine.so
module_app		account.so
module_app		menu.so
rtp_ports		{rtp_port}-{rtp_end}
"""
ACCOUNT = (
    "<sip:1001@127.0.0.1:{port};transport=udp>;auth_pass={password};answermode=auto;regint=600\n"
)


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


class Baresip:
    def __init__(self, workdir: Path, ua_port: int, password: str = "pw1001") -> None:
        self.workdir = workdir
        self.sip_port = free_port()
        rtp = free_port() & ~1
        (workdir / "config").write_text(
            CONFIG.format(sip_port=self.sip_port, rtp_port=rtp, rtp_end=rtp + 9)
        )
        (workdir / "accounts").write_text(ACCOUNT.format(port=ua_port, password=password))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *commands: str) -> None:
        assert BARESIP is not None
        args = [BARESIP, "-f", str(self.workdir), "-s"]  # -s: SIP trace into the log
        for command in commands:
            args += ["-e", command]
        self.log = open(self.workdir / "baresip.log", "wb")  # noqa: SIM115
        self.process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.log,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()  # only the baresip we started, by its PID
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.log.close()


@pytest.fixture
async def registrar_ua() -> AsyncIterator[tuple[UserAgent, list[InboundInvite]]]:
    invites: list[InboundInvite] = []
    ua = UserAgent(
        UAConfig(port=free_port(), registrar=True, trusted_networks=(), t1=0.1),
        invites.append,
        authenticator={"1001": "pw1001"}.get,
    )
    await ua.start()
    yield ua, invites
    await ua.close()


async def test_register_call_in_call_out_hold_refer_unregister(
    registrar_ua: tuple[UserAgent, list[InboundInvite]], tmp_path: Path
):
    ua, invites = registrar_ua
    phone = Baresip(tmp_path, ua.port)
    await phone.start(f"/dial sip:9000@127.0.0.1:{ua.port}")
    try:
        await eventually(lambda: ua.registrar.lookup("1001"))
        (contact,) = ua.registrar.lookup("1001")
        assert contact.endswith(f"@127.0.0.1:{phone.sip_port}")

        # The phone's call: challenged (untrusted source), then delivered authenticated.
        await eventually(lambda: invites)
        assert invites[0].request_user == "9000"
        assert invites[0].authenticated_user == "1001"
        invites[0].reject(486)

        # Our call to its registered contact: auto-answered.
        events = Recorder()
        call = ua.invite(contact, from_user="2000", sdp=OFFER, on_event=events)
        answered = await events.wait_for(Answered)
        assert isinstance(answered, Answered) and answered.sdp and b"m=audio" in answered.sdp

        # Hold and resume with re-INVITEs.
        results = Results()
        call.reinvite(OFFER + b"a=sendonly\r\n", results.add)
        await results.wait_len(1)
        code, answer = results.items[0]  # type: ignore[misc]
        assert code == 200 and b"a=recvonly" in answer
        call.reinvite(OFFER, results.add)
        await results.wait_len(2)
        assert results.items[1][0] == 200  # type: ignore[index]

        # Transfer the phone back to us (number 3000): it calls, we report progress.
        transferred = Recorder()

        def on_transfer_call(invite: InboundInvite) -> None:
            invite.set_event_handler(transferred)
            invite.answer(OFFER)

        ua.on_invite = on_transfer_call
        progress = Results()
        call.refer(f"sip:3000@127.0.0.1:{ua.port}", on_progress=progress.add)
        await transferred.wait_for(Confirmed, timeout=10)
        await eventually(lambda: any(code >= 200 for code in progress.items), timeout=10)  # type: ignore[operator]
        assert progress.items[-1] == 200
        call.bye()  # baresip 1.0 leaves the transferred call to the transferor
        await asyncio.sleep(0.2)
        assert not any(isinstance(e, Terminated) for e in events.events)
    finally:
        await phone.stop()
    # On quitting baresip unregisters (Expires: 0).
    await eventually(lambda: not ua.registrar.lookup("1001"), timeout=5)
