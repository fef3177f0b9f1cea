"""Interop with sipp's built-in uac and uas scenarios over UDP on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Answered, Confirmed, Terminated

from .test_useragent import ANSWER, OFFER, Recorder

SIPP = shutil.which("sipp")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(SIPP is None, reason="sipp not installed")]


def free_port() -> int:
    """A port free for both UDP and TCP right now (another process may still race us)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class Sipp:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> None:
        assert SIPP is not None
        self.process = await asyncio.create_subprocess_exec(
            SIPP,
            *args,
            "-m",
            "1",
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_port()),
            "-timeout",
            "20s",
            "-timeout_error",
            "-trace_err",
            "-nostdin",
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def wait(self, timeout: float = 30) -> tuple[int, str]:
        assert self.process is not None
        _, stderr = await asyncio.wait_for(self.process.communicate(), timeout)
        errors = "".join(p.read_text() for p in self.workdir.glob("*_errors.log"))
        return self.process.returncode or 0, stderr.decode(errors="replace") + errors

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()  # only the sipp we started, by its PID
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()


async def wait_bound(port: int, tcp: bool = False) -> None:
    """Wait until sipp holds its port, so our first INVITE is not lost."""
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"sipp did not bind port {port}")


def recorder_sdp(recorder: Recorder) -> bytes | None:
    answered = [e for e in recorder.events if isinstance(e, Answered)]
    assert answered and answered[0].sdp and answered[0].sdp.startswith(b"v=0")
    return answered[0].sdp


@pytest.fixture
async def sipp(tmp_path: Path) -> AsyncIterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    await runner.stop()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_sipp_uac_calls_useragent(sipp: Sipp, transport: str):
    recorder = Recorder()
    invites: list[InboundInvite] = []

    def on_invite(invite: InboundInvite) -> None:
        invites.append(invite)
        invite.set_event_handler(recorder)
        invite.ringing()
        invite.answer(ANSWER)

    ua = UserAgent(UAConfig(port=0), on_invite)
    await ua.start()
    try:
        await sipp.start(
            "-sn",
            "uac",
            "-t",
            transport,
            "-s",
            "1234",
            "-p",
            str(free_port()),
            f"127.0.0.1:{ua.port}",
        )
        code, output = await sipp.wait()
        assert code == 0, output
        assert await recorder.wait_for(Terminated) == Terminated("bye")
        assert Confirmed() in recorder.events
        assert invites[0].request_user == "1234"
    finally:
        await ua.close()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_useragent_calls_sipp_uas(sipp: Sipp, transport: str):
    port = free_port()
    await sipp.start("-sn", "uas", "-t", transport, "-p", str(port))
    await wait_bound(port, tcp=transport == "t1")
    ua = UserAgent(UAConfig(port=0), lambda invite: invite.reject(603))
    await ua.start()
    try:
        recorder = Recorder()
        call = ua.invite(
            f"sip:service@127.0.0.1:{port}" + (";transport=tcp" if transport == "t1" else ""),
            from_user="gw",
            sdp=OFFER,
            on_event=recorder,
        )
        assert await recorder.wait_for(Answered) == Answered(recorder_sdp(recorder))
        call.bye()
        code, output = await sipp.wait()
        assert code == 0, output
    finally:
        await ua.close()
