"""Helpers for the web phone and client library tests (tests/e2e/test_webphone*.py).

Debian's Chromium only (never a downloaded browser), headless, with the fake audio/video
capture devices. Every page is instrumented before any script runs: unhandled promise
rejections, page errors and deprecation reports are collected on `window.__problems`
and checked by `assert_no_problems`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.e2e.conftest import CHROMIUM, REPO, _require
from tests.e2e.test_browser import CHROMIUM_ARGS, FAKE_MIC_HZ

__all__ = [
    "FAKE_MIC_HZ",
    "SCREENSHOTS",
    "Browser",
    "assert_no_problems",
    "launch",
    "measure_audio",
]

SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", REPO / "artifacts" / "screenshots"))

# Installed in every page before its own scripts.
INSTRUMENT = r"""
(() => {
  const problems = (window.__problems = []);
  window.addEventListener("unhandledrejection", (e) => {
    const reason = e.reason && (e.reason.stack || e.reason.message) || e.reason;
    problems.push("unhandled rejection: " + reason);
  });
  window.addEventListener("error", (e) => {
    problems.push("error: " + (e.error && e.error.stack || e.message));
  });
  // Every WebSocket the page opens, so a test can cut one like a network drop would.
  const NativeWebSocket = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
  // Every RTCPeerConnection, so a test can look at its descriptions and ICE state.
  const NativePeerConnection = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = class extends NativePeerConnection {
    constructor(...args) { super(...args); window.__pcs.push(this); }
  };
  if (typeof ReportingObserver === "function") {
    const observer = new ReportingObserver((reports) => {
      for (const r of reports) problems.push(r.type + ": " + JSON.stringify(r.body));
    }, { types: ["deprecation", "intervention"], buffered: true });
    observer.observe();
    window.__flushReports = () => {
      for (const r of observer.takeRecords()) problems.push(r.type + ": " + JSON.stringify(r.body));
    };
  }
})();
"""

# Measures the audio of a media element (its srcObject) with a WebAudio AnalyserNode:
# RMS per 25 ms window and the spectrum peak of the windows carrying signal.
MEASURE = r"""
async ([selector, ms]) => {
  const el = document.querySelector(selector);
  if (!el || !el.srcObject) return { error: "no stream on " + selector };
  const stream = el.srcObject;
  if (!stream.getAudioTracks().length) return { error: "no audio track on " + selector };
  const ctx = new AudioContext();
  await ctx.resume().catch(() => {});
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 4096;
  analyser.smoothingTimeConstant = 0;
  source.connect(analyser);
  const time = new Float32Array(analyser.fftSize);
  const freq = new Float32Array(analyser.frequencyBinCount);
  const power = new Float64Array(analyser.frequencyBinCount);
  let maxRms = 0, windows = 0;
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      analyser.getFloatTimeDomainData(time);
      let s = 0;
      for (const v of time) s += v * v;
      const rms = Math.sqrt(s / time.length);
      windows += 1;
      maxRms = Math.max(maxRms, rms);
      if (rms > 1e-3) {
        analyser.getFloatFrequencyData(freq);
        for (let i = 1; i < freq.length; i++) power[i] += Math.pow(10, freq[i] / 10);
      }
    }, 25);
    setTimeout(() => { clearInterval(timer); resolve(); }, ms);
  });
  let best = 1;
  for (let i = 2; i < power.length; i++) if (power[i] > power[best]) best = i;
  const peakHz = power[best] > 0 ? best * ctx.sampleRate / analyser.fftSize : null;
  await ctx.close();
  return { maxRms, peakHz, windows };
}
"""


async def measure_audio(page: Any, selector: str, ms: int = 2500) -> dict[str, Any]:
    """Remote audio of the element at `selector`: {maxRms, peakHz, windows} or {error}."""
    return await page.evaluate(MEASURE, [selector, ms])


def assert_audio(
    result: dict[str, Any], hz: float = FAKE_MIC_HZ, what: str = "remote audio"
) -> None:
    assert "error" not in result, f"{what}: {result}"
    assert result["maxRms"] > 0.01, f"{what} silent: {result}"
    assert result["peakHz"] is not None and abs(result["peakHz"] - hz) <= 25, f"{what}: {result}"


class Browser:
    """One headless Chromium; `page()` opens a page in a fresh context (own storage)."""

    def __init__(self, browser: Any, workdir: Path, name: str) -> None:
        self.browser = browser
        self.workdir = workdir
        self.name = name
        self.pages: list[Any] = []
        self.console: list[str] = []

    async def page(self, label: str, *, width: int = 1100, height: int = 800) -> Any:
        context = await self.browser.new_context(viewport={"width": width, "height": height})
        await context.add_init_script(INSTRUMENT)
        page = await context.new_page()
        page.on("console", lambda m: self.console.append(f"[{label}] [{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[{label}] [pageerror] {e}"))
        self.pages.append(page)
        return page

    async def close(self) -> None:
        for page in self.pages:
            with contextlib.suppress(Exception):
                await page.context.close()
        await self.browser.close()
        (self.workdir / f"{self.name}-console.log").write_text("\n".join(self.console))


@contextlib.asynccontextmanager
async def launch(workdir: Path, name: str = "chromium") -> AsyncIterator[Browser]:
    _require(CHROMIUM, "chromium")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        raw = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30000
        )
        browser = Browser(raw, workdir, name)
        try:
            yield browser
        finally:
            await browser.close()


async def assert_no_problems(page: Any) -> None:
    """No unhandled rejection, page error, deprecation or intervention report."""
    problems = await page.evaluate(
        "() => { if (window.__flushReports) window.__flushReports();"
        " return window.__problems || []; }"
    )
    assert problems == [], "page problems:\n" + "\n".join(problems)


async def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


# --------------------------------------------------------------------------- the phone


async def open_phone(page: Any, base_url: str, query: str = "") -> None:
    response = await page.goto(f"{base_url}/{query}", timeout=15000)
    assert response is not None and response.ok, f"GET /: {response and response.status}"
    await page.wait_for_selector("body[data-ready='1']", timeout=10000)


async def phone_login(page: Any, number: str, username: str = "", password: str = "") -> None:
    """Fill the login form and wait for 'Logged in'."""
    await page.get_by_label("Your number").fill(number)
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_selector("#status[data-state='SUCCESS']", timeout=15000)


async def events(page: Any, kind: str | None = None) -> list[dict[str, Any]]:
    found = await page.evaluate("() => window.phoneEvents || []")
    return [e for e in found if kind is None or e["type"] == kind]


async def call_states(page: Any, number: str | None = None) -> list[str]:
    return [
        e["state"]
        for e in await events(page, "call-state")
        if number is None or e.get("number") == number
    ]


async def wait_call(page: Any, state: str, *, index: int = 0, timeout: float = 20000) -> Any:
    """The call card (li) number `index` (newest first) once it shows `state`."""
    card = page.locator("#calls > li.call").nth(index)
    await card.and_(page.locator(f"li.call[data-state='{state}']")).wait_for(timeout=timeout)
    return card


# --------------------------------------------------------------------------- the bench


async def open_bench(page: Any, base_url: str) -> None:
    """gateway/static/test/library.html: the library with recorded events (window.bench)."""
    response = await page.goto(f"{base_url}/test/library.html", timeout=15000)
    assert response is not None and response.ok
    await page.wait_for_selector("body[data-ready='1']", timeout=10000)


async def bench_events(page: Any, type_: str | None = None, who: str | None = None) -> list[dict]:
    found = await page.evaluate("() => window.bench.events")
    return [
        e
        for e in found
        if (type_ is None or e["type"] == type_) and (who is None or e["who"] == who)
    ]


async def wait_bench(page: Any, condition: str, timeout: float = 20000) -> None:
    """Wait until `condition` (JS over `events`, the recorded list) is true."""
    try:
        await page.wait_for_function(
            f"() => {{ const events = window.bench.events; return !!({condition}); }}",
            timeout=timeout,
            polling=100,
        )
    except Exception as exc:
        found = await page.evaluate("() => window.bench.events")
        raise AssertionError(f"timeout waiting for {condition}\nevents: {found}") from exc


def call_state_js(state: str, call: int = 0, who: str | None = None) -> str:
    who_js = f" && e.who === {json.dumps(who)}" if who else ""
    return (
        f"events.some(e => e.type === 'call-state' && e.call === {call} "
        f"&& e.state === {json.dumps(state)}{who_js})"
    )


def login_js(state: str, who: str, nth: int = 1) -> str:
    return (
        f"events.filter(e => e.type === 'login' && e.who === {json.dumps(who)} "
        f"&& e.state === {json.dumps(state)}).length >= {nth}"
    )


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
