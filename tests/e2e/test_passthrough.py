"""Codec pass-through end to end: a browser restricted to PCMU calls a sipp UAS that
answers PCMU and echoes RTP. The gateway's legs then both send PCMU and relay payloads
without decoding (proved at the rtc level by tests/rtc/test_passthrough.py, which counts
the coder calls); here the audio is checked (the client's tone comes back) and the
gateway's log shows the pipeline it chose."""

from __future__ import annotations

import re

import aiortc.codecs
import pytest

from tests.e2e.client import JsonV1Client
from tests.e2e.test_calls import check_tone

pytestmark = pytest.mark.e2e


@pytest.fixture
def pcmu_only_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiortc in this process (the test clients, not the gateway) offers PCMU only."""
    audio = [
        c
        for c in aiortc.codecs.CODECS["audio"]
        if c.mimeType.lower() in ("audio/pcmu", "audio/telephone-event")
    ]
    monkeypatch.setitem(aiortc.codecs.CODECS, "audio", audio)


async def test_pcmu_browser_to_pcmu_echo(gateway, sipp, clients, pcmu_only_clients):
    uas = sipp.uas_echo(gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=1000.0)
    await call.wait_state("active", timeout=20)
    assert call.answer_sdp is not None
    m_line = next(line for line in call.answer_sdp.splitlines() if line.startswith("m=audio"))
    assert m_line.split()[3] == "0", m_line  # the gateway's browser leg sends PCMU
    await check_tone(call, 1000.0, what="PCMU echo from sipp through pass-through")
    # the gateway says so, once per direction (rtc.bridge logs each pipeline change)
    bridge = [
        line.split("rtc.bridge: ", 1)[1]
        for line in gateway.log_path.read_text(errors="replace").splitlines()
        if "rtc.bridge: " in line
    ]
    assert any(
        re.fullmatch(r"WebRtcLeg -> \w*RtpLeg: pcmu payloads relayed undecoded", b) for b in bridge
    ), bridge
    assert any(
        re.fullmatch(r"\w*RtpLeg -> WebRtcLeg: pcmu payloads relayed undecoded", b) for b in bridge
    ), bridge
    assert not any("transcoding" in b for b in bridge), bridge
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await uas.wait(15) == 0
