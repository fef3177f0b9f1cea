"""Headless Chromium (Debian's, never a downloaded one) calls the sipp echo through the
gateway with its own WebRTC stack, driven by Playwright.

The page gateway/static/test/call.html logs in over json-v1, calls the number with the fake
microphone and measures the remote audio with a WebAudio AnalyserNode. Chromium's fake
audio capture device beeps: a ~400 Hz tone for about 40 ms every 500 ms (measured with
Chromium 156), so the echoed audio must be non-silent with its spectrum peak near 400 Hz.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import CHROMIUM, _require

pytestmark = pytest.mark.e2e

FAKE_MIC_HZ = 400.0  # Chromium's fake audio input beep
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # real host candidates instead of mDNS names, which aiortc cannot resolve
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


async def test_browser_calls_sip_echo(gateway, sipp, e2e_dir):
    _require(CHROMIUM, "chromium")
    # Never let Playwright fetch a browser of its own.
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.async_api import async_playwright

    uas = sipp.uas_echo(gateway.pbx_port)
    console: list[str] = []
    result: dict | None = None
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(e2e_dir / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=30000,
        )
        try:
            page = await context.new_page()
            page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
            page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
            url = f"{gateway.http_url}/test/call.html?number=5555&user=1001&seconds=4&skip=1"
            response = await page.goto(url, timeout=15000)
            assert response is not None and response.ok, (
                f"GET {url}: {response and response.status}"
            )
            try:
                await page.wait_for_function(
                    "window.result && window.result.done", timeout=60000, polling=200
                )
            finally:
                result = await page.evaluate("window.result || null")
                (e2e_dir / "browser-result.json").write_text(json.dumps(result, indent=2))
                (e2e_dir / "browser-console.log").write_text("\n".join(console))
        finally:
            await context.close()

    summary = {
        k: (result or {}).get(k)
        for k in ("stage", "error", "states", "maxRms", "meanRms", "peakHz", "iceConnectionState")
    }
    detail = f"{summary}\npage log:\n" + "\n".join((result or {}).get("log", [])[-60:])
    assert result is not None, "page did not set window.result"
    assert result["error"] is None, detail
    assert "active" in result["states"], detail
    assert result["maxRms"] > 0.01, f"remote audio silent (max RMS {result['maxRms']})\n{detail}"
    assert result["peakHz"] is not None and abs(result["peakHz"] - FAKE_MIC_HZ) <= 25, detail
    assert await uas.wait(15) == 0, "sipp UAS did not complete the call"
