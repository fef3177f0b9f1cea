"""The web phone at / and its client library (/client/webrtc-client.js) in headless
Chromium (Debian's, with fake capture devices) against the gateway and real SIP peers.

Each test drives the phone like a user (form, dial pad, keyboard, buttons) or the library
through a small page script, measures the remote audio with a WebAudio analyser (the fake
microphone beeps at ~400 Hz), and saves screenshots to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.webphone_helpers import (
    assert_audio,
    assert_no_problems,
    call_states,
    events,
    launch,
    measure_audio,
    open_phone,
    phone_login,
    screenshot,
    wait_call,
)

pytestmark = pytest.mark.e2e


def dedupe(states: list[str]) -> list[str]:
    out: list[str] = []
    for s in states:
        if not out or out[-1] != s:
            out.append(s)
    return out


async def test_phone_calls_sip_echo(gateway, sipp, e2e_dir):
    """Login, dial with the keyboard, DIALING -> RINGING -> CONNECTED, echoed audio at the
    fake microphone's frequency, hang up -> DISCONNECTED / USERTERMINATED."""
    uas = sipp.uas_echo(gateway.pbx_port)
    async with launch(e2e_dir) as browser:
        page = await browser.page("alice")
        await open_phone(page, gateway.http_url)
        await screenshot(page, "01-login")
        await phone_login(page, "1001", "alice")
        assert "Alice (1001)" in await page.locator("#status-text").inner_text()
        await screenshot(page, "02-logged-in")

        # Keyboard input goes to the number field; Enter dials.
        await page.locator("body").click(position={"x": 5, "y": 300})
        await page.keyboard.type("5555")
        assert await page.locator("#dial-number").input_value() == "5555"
        await page.keyboard.press("Enter")
        card = await wait_call(page, "CONNECTED")
        await screenshot(page, "03-connected")
        result = await measure_audio(page, "#calls > li.call audio", 3000)
        assert_audio(result, what="echo from sipp")
        await asyncio.sleep(1.1)
        assert (await card.locator(".call-duration").inner_text()).startswith("0:0")

        await card.get_by_role("button", name="Hang up").click()
        await wait_call(page, "DISCONNECTED")
        assert await card.get_attribute("data-reason") == "USERTERMINATED"
        assert await card.locator(".call-state").inner_text() == "You hung up"
        await screenshot(page, "04-ended")
        states = dedupe(await call_states(page, "5555"))
        assert states == ["DIALING", "RINGING", "CONNECTED", "DISCONNECTED"], states
        await assert_no_problems(page)
    assert await uas.wait(15) == 0, "sipp UAS did not complete the call"
