"""Opus toward SIP ([media] codecs with "opus"): a sipp UAS answering Opus only echoes
the gateway's Opus, and a real SIP phone (baresip with its opus module) talks to a web
user both ways (Opus on both legs: the gateway relays the payloads undecoded)."""

from __future__ import annotations

import pytest

from tests.audio import dominant_frequency, rms_dbfs
from tests.e2e.client import JsonV1Client, max_playback_rate
from tests.e2e.test_calls import check_tone
from tests.e2e.test_passthrough import pcmu_only_clients  # noqa: F401 - fixture
from tests.e2e.test_sip_media import check_echo_after_active, logged_in, uas, wait_active
from tests.e2e.test_sip_phone import BARESIP, phones  # noqa: F401 - fixture

pytestmark = pytest.mark.e2e

OPUS = '\n[media]\ncodecs = ["opus", "PCMU"]\n'


@pytest.mark.parametrize("gateway", [OPUS], indirect=True)
async def test_opus_far_end_echoes_wideband_audio(gateway, sipp, clients):
    """The far end answers Opus only (payload type 98) and echoes the packets: a 9 kHz
    tone, far beyond G.711's and G.722's bands, comes back at 9 kHz."""
    far = uas(sipp, gateway, "uas_opus.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)
    call = await alice.dial("5555", freq=9000.0)
    await wait_active(call)
    assert max_playback_rate(call.answer_sdp) is None, call.answer_sdp  # Opus may go through
    await check_echo_after_active(call, 9000.0)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0
    invite = far.logs()
    assert "opus/48000/2" in invite


@pytest.mark.parametrize("gateway", [OPUS], indirect=True)
async def test_pcmu_browser_to_opus_far_end_transcodes(
    gateway,
    sipp,
    clients,
    pcmu_only_clients,  # noqa: F811
):
    """A PCMU-only browser and an Opus-only far end: the gateway encodes and decodes Opus
    on the SIP leg (and G.711 on the browser leg); the 1 kHz tone comes back."""
    far = uas(sipp, gateway, "uas_opus.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)
    call = await alice.dial("5555", freq=1000.0)
    await wait_active(call)
    await check_echo_after_active(call, 1000.0)
    bridge = [
        line.split("rtc.bridge: ", 1)[1]
        for line in gateway.log_path.read_text(errors="replace").splitlines()
        if "rtc.bridge: " in line
    ]
    assert "relayed undecoded" not in " ".join(bridge), bridge
    assert sum(b.endswith(": transcoding") for b in bridge) >= 2, bridge
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0


@pytest.mark.skipif(BARESIP is None, reason="baresip missing")
@pytest.mark.parametrize("gateway", [OPUS], indirect=True)
async def test_web_user_calls_opus_phone(gateway, clients, phones):  # noqa: F811
    """baresip with only its opus module: the call runs in Opus on the SIP side; its 440 Hz
    sine reaches the web client and the client's 1 kHz tone is what baresip decodes."""
    phone = phones(gateway, "1002", "bob-secret")
    config = phone.dir / "config"
    assert "module\t\t\tg711.so\n" in config.read_text()
    config.write_text(config.read_text().replace("g711.so", "opus.so"))
    phone.start()
    await phone.wait_log("200 OK")
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("1002", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 440.0, what="baresip's sine (Opus) at the web client")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    # both legs send Opus: the gateway relays the payloads undecoded, both ways
    bridge = [
        line.split("rtc.bridge: ", 1)[1]
        for line in gateway.log_path.read_text(errors="replace").splitlines()
        if "rtc.bridge: " in line
    ]
    assert sum(b.endswith(": opus payloads relayed undecoded") for b in bridge) >= 2, bridge
    phone.stop()
    assert "Set audio decoder: opus" in phone.log(), phone.log()[-2000:]
    assert "Set audio encoder: opus" in phone.log()
    pcm, rate = phone.heard()
    tail = pcm[rate:]
    assert tail.size > rate, f"baresip decoded only {pcm.size / rate:.1f} s"
    assert rms_dbfs(tail) > -40, f"baresip heard silence ({rms_dbfs(tail):.1f} dBFS)"
    assert abs(dominant_frequency(tail, rate) - 1000.0) <= 20, dominant_frequency(tail, rate)
