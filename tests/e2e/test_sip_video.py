"""Video between a web client and a real SIP video phone (baresip), both directions, relayed
by the gateway without transcoding (VP8; H.264 too).

baresip sends its fakevideo source (a synthetic picture) and displays what it decodes on
the fakevideo display; its snapshot filter saves a decoded received frame as PNG on
request (ctrl_tcp command ``snapshot_recv``), which proves the web client's video reached
baresip's decoder. The aiortc web client sends a moving pattern and counts the frames it
decodes from baresip's video.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rtc.webrtcvideo import offer_has_video
from tests.e2e.client import JsonV1Client
from tests.e2e.conftest import free_port, stop_process

BARESIP = shutil.which("baresip")
MODULES = Path("/usr/lib/baresip/modules")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(BARESIP is None, reason="baresip missing"),
    pytest.mark.skipif(
        not (MODULES / "fakevideo.so").exists() or not (MODULES / "vp8.so").exists(),
        reason="baresip video modules missing",
    ),
]

CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip_port}
sip_trans_def\t\tudp
audio_source\t\tausine,440
ausrc_srate\t\t48000
ausrc_channels\t\t2
video_source\t\tfakevideo,nil
video_display\t\tfakevideo,nil
video_size\t\t320x240
video_bitrate\t\t500000
video_fps\t\t15
module_path\t\t{modules}
module\t\t\tg711.so
module\t\t\tausine.so
module\t\t\tfakevideo.so
module\t\t\t{codec_module}
module\t\t\tsnapshot.so
module\t\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
module_app\t\taccount.so
module_app\t\tmenu.so
rtp_ports\t\t{rtp}-{rtp_end}
"""

# decoded frames the web client must receive from baresip
MIN_FRAMES = 20


class VideoPhone:
    """baresip with video: fakevideo source and display, one video codec module."""

    def __init__(
        self,
        workdir: Path,
        gateway_sip_port: int,
        number: str,
        password: str,
        codec: str,
        mediaenc: str | None = None,
    ):
        self.dir = workdir / f"baresip-video-{number}"
        self.dir.mkdir()
        self.sip_port = free_port()
        self.ctrl_port = free_port(udp=False)
        rtp = free_port(tcp=False, span=10) & ~1
        (self.dir / "config").write_text(
            CONFIG.format(
                sip_port=self.sip_port,
                modules=MODULES,
                codec_module="vp8.so" if codec == "VP8" else "avcodec.so",
                ctrl_port=self.ctrl_port,
                rtp=rtp,
                rtp_end=rtp + 9,
            )
            + ("module\t\t\tsrtp.so\n" if mediaenc else "")
        )
        (self.dir / "accounts").write_text(
            f"<sip:{number}@127.0.0.1:{gateway_sip_port};transport=udp>"
            f";auth_pass={password};answermode=auto;regint=600"
            + (f";mediaenc={mediaenc}" if mediaenc else "")
            + "\n"
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while text not in self.log():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"baresip never logged {text!r}:\n{self.log()[-4000:]}")
            await asyncio.sleep(0.1)

    async def command(self, command: str, params: str = "") -> dict:
        """One ctrl_tcp command (netstring-framed JSON); baresip's response."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
        try:
            body = json.dumps({"command": command, "params": params, "token": "t1"}).encode()
            writer.write(b"%d:%s," % (len(body), body))
            await writer.drain()
            buffer = b""
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 5)
                if not chunk:
                    raise ConnectionError(f"ctrl_tcp closed: {buffer!r}")
                buffer += chunk
                while b":" in buffer:
                    size, _, rest = buffer.partition(b":")
                    if len(rest) < int(size) + 1:
                        break
                    message = json.loads(rest[: int(size)])
                    buffer = rest[int(size) + 1 :]
                    if message.get("response"):
                        return message
        finally:
            writer.close()

    async def snapshot_received(self, timeout: float = 10.0) -> Path:
        """Ask baresip to save the next decoded received video frame; the PNG it wrote."""
        prefix = self.dir / "received"
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.command("snapshot_recv", str(prefix))
            for _ in range(20):
                pngs = sorted(self.dir.glob("received*"))
                if pngs and pngs[-1].stat().st_size > 0:
                    return pngs[-1]
                await asyncio.sleep(0.1)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"baresip saved no received video frame:\n{self.log()[-4000:]}")

    def decoded_fps(self) -> float:
        """The highest rate at which baresip decoded received video (its status line
        ``efps=<encoded>/<decoded>``)."""
        rates = [float(m) for m in re.findall(r"efps=[0-9.]+/([0-9.]+)", self.log())]
        return max(rates, default=0.0)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=3.0)


@pytest.fixture
def video_phones(e2e_dir: Path):
    made: list[VideoPhone] = []

    def make(
        gateway, number: str, password: str, codec: str = "VP8", mediaenc: str | None = None
    ) -> VideoPhone:
        phone = VideoPhone(e2e_dir, gateway.sip_port, number, password, codec, mediaenc)
        made.append(phone)
        return phone

    yield make
    for phone in made:
        phone.stop()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def _keeps_decoding(phone: VideoPhone, fps: float = 5.0) -> None:
    """baresip decodes received video at `fps` or more (its status line gives the rate
    after a few seconds)."""
    for _ in range(150):
        if phone.decoded_fps() >= fps:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"baresip decodes {phone.decoded_fps()} fps:\n{phone.log()[-3000:]}")


async def _check_video_both_ways(call, phone: VideoPhone) -> None:
    await call.wait_video(MIN_FRAMES, timeout=30)
    assert call.video_counter.sizes, "no decoded video at the web client"
    png = await phone.snapshot_received()
    # the web client's pattern is 320x240: baresip decoded the relayed frames
    assert _png_size(png) == (320, 240), _png_size(png)
    # and keeps decoding them (the web client sends 30 frames/s; baresip's status line
    # gives its decoding rate after a few seconds)
    await _keeps_decoding(phone)


@contextlib.asynccontextmanager
async def _chromium_calls_phone(gateway, e2e_dir: Path, phone: VideoPhone, *, video: bool):
    """The web phone in headless Chromium, logged in as 1001, calls the (started and
    registered) phone 1002, in video mode or not; the page once the call is connected."""
    from tests.e2e.webphone_helpers import launch, open_phone, phone_login, wait_call

    phone.start()
    await phone.wait_log("200 OK")
    async with launch(e2e_dir) as browser:
        page = await browser.page("alice")
        await open_phone(page, gateway.http_url)
        await phone_login(page, "1001")
        if video:
            await page.get_by_role("checkbox", name="Video").check()
        await page.locator("#dial-number").fill("1002")
        await page.get_by_role("button", name="Call", exact=True).click()
        await wait_call(page, "CONNECTED")
        yield page


async def _remote_video_plays(page, timeout: float = 20000) -> None:
    await page.wait_for_function(
        """() => { const v = document.querySelector('#remote-video');
           return v && v.videoWidth > 0 && v.srcObject && !v.paused; }""",
        timeout=timeout,
    )


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_phone_calls_web_client_with_video(gateway, clients, video_phones, codec):
    if codec == "H264" and not (MODULES / "avcodec.so").exists():
        pytest.skip("baresip avcodec module missing")
    alice: JsonV1Client = await clients(gateway, name="alice")
    alice.video = True
    alice.video_codec = f"video/{codec}"
    await alice.login("1001", "Alice")
    phone = video_phones(gateway, "1002", "bob-secret", codec)
    phone.start("/dial 1001")
    incoming = await alice.wait_incoming(timeout=20)
    await incoming.accept()
    await incoming.answer()
    assert incoming.offer is not None and "m=video" in incoming.offer
    await incoming.wait_state("active", timeout=20)
    await _check_video_both_ways(incoming, phone)
    await incoming.hangup()
    await incoming.wait_state("terminated", timeout=10)
    log = gateway.log_path.read_text(errors="replace")
    assert f"video {codec} sendrecv" in log, log[-3000:]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_web_client_calls_phone_with_video(gateway, clients, video_phones, codec):
    if codec == "H264" and not (MODULES / "avcodec.so").exists():
        pytest.skip("baresip avcodec module missing")
    phone = video_phones(gateway, "1002", "bob-secret", codec)
    phone.start()
    await phone.wait_log("200 OK")  # registered
    alice: JsonV1Client = await clients(gateway, name="alice")
    alice.video = True
    alice.video_codec = f"video/{codec}"
    await alice.login("1001", "Alice")
    call = await alice.dial("1002", freq=1000.0)
    assert call.answer_sdp is not None and offer_has_video(call.answer_sdp)
    await call.wait_state("active", timeout=20)
    await _check_video_both_ways(call, phone)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    # the call record names the video codec and counts video both ways on both legs
    from tests.e2e.test_login import call_records

    (record,) = await call_records(gateway, at_least=1)
    assert record["video_codec"] == codec, record
    video = record["stats"]["video"]
    assert video["codec"] == codec, video
    for leg in ("far", "client"):  # baresip's stream, the web client's
        assert video[leg]["codec"] == codec, video
        assert video[leg]["packets_sent"] > 0 and video[leg]["packets_received"] > 0, video
        assert video[leg]["bytes_sent"] > 0 and video[leg]["bytes_received"] > 0, video
        assert video[leg]["frames_received"] > 0, video


async def test_video_resumes_after_hold(gateway, clients, video_phones):
    """Hold and retrieve re-INVITE the phone with its m=video (sendonly, then sendrecv);
    video flows both ways again afterwards."""
    from tests.e2e.test_hold import hold

    phone = video_phones(gateway, "1002", "bob-secret", "VP8")
    phone.start()
    await phone.wait_log("200 OK")
    alice: JsonV1Client = await clients(gateway, name="alice")
    alice.video = True
    await alice.login("1001", "Alice")
    call = await alice.dial("1002", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await _check_video_both_ways(call, phone)

    await hold(call, "hold", "held")
    await hold(call, "retrieve", "active")
    log = phone.log()
    reinvites = [m for m in log.split("INVITE sip:")[2:] if "m=video" in m]
    assert any("a=sendonly" in m.split("m=video")[1] for m in reinvites), log[-4000:]
    # after the retrieve: more frames at the client, a new decoded frame at baresip
    before = call.video_frames
    for png in phone.dir.glob("received*"):
        png.unlink()
    await call.wait_video(before + MIN_FRAMES, timeout=30)
    png = await phone.snapshot_received()
    assert _png_size(png) == (320, 240)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)


async def test_chromium_web_phone_video_call_to_phone(gateway, e2e_dir, video_phones):
    """The web phone in headless Chromium (the real WebRTC stack, fake camera) in video
    mode calls baresip: its remote <video> plays baresip's frames and baresip decodes
    Chromium's (VP8, relayed as it is)."""
    phone = video_phones(gateway, "1002", "bob-secret", "VP8")
    async with _chromium_calls_phone(gateway, e2e_dir, phone, video=True) as page:
        await _remote_video_plays(page)
        frames = await page.evaluate(
            """async () => { const v = document.querySelector('#remote-video');
               const before = v.getVideoPlaybackQuality().totalVideoFrames;
               await new Promise(r => setTimeout(r, 2000));
               return [before, v.getVideoPlaybackQuality().totalVideoFrames,
                       v.videoWidth, v.videoHeight]; }"""
        )
        assert frames[1] - frames[0] >= 10, frames  # baresip's 15 frames/s keep coming
        png = await phone.snapshot_received()
        width, height = _png_size(png)
        assert width >= 160 and height >= 120, (width, height)
        await _keeps_decoding(phone)
    log = gateway.log_path.read_text(errors="replace")
    assert "video VP8 sendrecv" in log, log[-3000:]


async def test_forked_call_answered_by_video_phone(gateway, clients, video_phones):
    """1002 is both a web client and a registered baresip: the web caller's video call rings
    both; baresip answers (auto) and the video flows both ways with it."""
    phone = video_phones(gateway, "1002", "bob-secret", "VP8")
    phone.start()
    await phone.wait_log("200 OK")
    bob: JsonV1Client = await clients(gateway, name="bob")
    await bob.login("1002", "Bob")
    alice: JsonV1Client = await clients(gateway, name="alice")
    alice.video = True
    await alice.login("1001", "Alice")
    call = await alice.dial("1002", freq=1000.0)
    await bob.wait_incoming(timeout=20)  # the web device rings too (and never answers)
    await call.wait_state("active", timeout=20)
    await _check_video_both_ways(call, phone)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)


@pytest.mark.parametrize("gateway", ['[media]\nsrtp = "optional"\n'], indirect=True)
async def test_srtp_video_call_from_phone(gateway, clients, video_phones):
    """baresip insists on SRTP (RTP/SAVP, SDES) for audio and video: the gateway keys its
    video stream by SDES too and the video flows both ways."""
    if not (MODULES / "srtp.so").exists():
        pytest.skip("baresip srtp module missing")
    alice: JsonV1Client = await clients(gateway, name="alice")
    alice.video = True
    await alice.login("1001", "Alice")
    phone = video_phones(gateway, "1002", "bob-secret", "VP8", mediaenc="srtp-mand")
    phone.start("/dial 1001")
    incoming = await alice.wait_incoming(timeout=20)
    await incoming.accept()
    await incoming.answer()
    await incoming.wait_state("active", timeout=20)
    await _check_video_both_ways(incoming, phone)
    # the gateway's answer: RTP/SAVP with a crypto line on both m-lines
    answer = [m for m in phone.log().split("SIP/2.0 200 OK") if "m=video" in m][-1]
    video = answer.split("m=video")[1]
    assert "RTP/SAVP" in video.splitlines()[0] and "a=crypto:" in video, answer[:3000]
    await incoming.hangup()
    await incoming.wait_state("terminated", timeout=10)


async def test_web_client_adds_video_to_a_phone_call(gateway, clients, video_phones):
    """An audio call, then the web client renegotiates with video (json-v1 §10): the
    gateway answers it, re-INVITEs the phone with m=video, and frames cross both ways."""
    phone = video_phones(gateway, "1002", "bob-secret", "VP8")
    phone.start()
    await phone.wait_log("200 OK")  # registered
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("1002", freq=1000.0)
    assert call.answer_sdp is not None and not offer_has_video(call.answer_sdp)
    await call.wait_state("active", timeout=20)
    await call.wait_audio(1.0)

    answer = await call.add_video()
    assert offer_has_video(answer), answer
    await _check_video_both_ways(call, phone)
    assert call.states.count("active") == 1 and call.reason is None, call.states
    # the phone was re-INVITEd with a video m-line it accepted
    reinvites = phone.log().split("INVITE sip:")[2:]
    assert any("m=video" in m for m in reinvites), phone.log()[-4000:]
    await call.hangup()
    await call.wait_state("terminated", timeout=10)


async def test_chromium_web_phone_turns_on_video_during_a_call(gateway, e2e_dir, video_phones):
    """The web phone in Chromium calls baresip audio-only, then presses the call's Video
    button: Chromium's re-offer (camera added) is answered, the phone is re-INVITEd with
    m=video, and video plays both ways."""
    phone = video_phones(gateway, "1002", "bob-secret", "VP8")
    async with _chromium_calls_phone(gateway, e2e_dir, phone, video=False) as page:
        assert await page.locator("#video-stage").is_hidden()
        await page.get_by_role("button", name="Video – call with").click()
        await _remote_video_plays(page)
        assert await page.locator(".call-state").first.inner_text() == "Connected · video"
        assert await page.locator(".act-video").first.is_hidden()
        png = await phone.snapshot_received()
        width, height = _png_size(png)
        assert width >= 160 and height >= 120, (width, height)
    reinvites = phone.log().split("INVITE sip:")[2:]
    assert any("m=video" in m for m in reinvites), phone.log()[-4000:]


async def _phone_dials(gateway, video_phones, callee) -> VideoPhone:
    """Starts the (baresip) phone 1002 given and a video phone 1001, which dials 1002."""
    callee.start()
    await callee.wait_log("200 OK")
    caller = video_phones(gateway, "1001", "alice-secret", "VP8")
    caller.start()
    await caller.wait_log("200 OK")
    await caller.command("dial", "1002")
    return caller


async def test_phone_calls_phone_with_video(gateway, video_phones):
    """Two baresip video phones registered with the gateway: one calls the other, the
    gateway joins them (phone to phone) and relays video between them as it is; each
    decodes the other's pictures."""
    callee = video_phones(gateway, "1002", "bob-secret", "VP8")
    caller = await _phone_dials(gateway, video_phones, callee)
    for phone in (caller, callee):
        png = await phone.snapshot_received(timeout=20)
        assert _png_size(png) == (320, 240), _png_size(png)
        await _keeps_decoding(phone)
    log = gateway.log_path.read_text(errors="replace")
    assert "joined" in log, log[-3000:]


async def test_video_phone_calls_audio_only_phone(gateway, e2e_dir, video_phones):
    """A video phone calls a phone without video through the gateway: the call is joined
    with audio, and the caller's video is rejected (m=video port 0 in the 200), not
    accepted with nothing to relay."""
    from tests.e2e.test_sip_phone import Phone

    callee = Phone(e2e_dir, gateway.sip_port, "1002", "bob-secret")
    try:
        caller = await _phone_dials(gateway, video_phones, callee)
        deadline = asyncio.get_running_loop().time() + 15
        while "Call established" not in caller.log():
            assert asyncio.get_running_loop().time() < deadline, caller.log()[-3000:]
            await asyncio.sleep(0.1)
        answer = [m for m in caller.log().split("SIP/2.0 200 OK") if "m=audio" in m][-1]
        assert re.search(r"m=audio [1-9]", answer) and "m=video 0 " in answer, answer[:3000]
        log = gateway.log_path.read_text(errors="replace")
        assert "joined" in log, log[-3000:]
    finally:
        callee.stop()
