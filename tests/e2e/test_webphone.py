"""The web phone at / and its client library (/client/webrtc-client.js) in headless
Chromium (Debian's, with fake capture devices) against the gateway and real SIP peers.

Each test drives the phone like a user (form, dial pad, keyboard, buttons) or the library
through a small page script, measures the remote audio with a WebAudio analyser (the fake
microphone beeps at ~400 Hz), and saves screenshots to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import re

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
        # 2 s, not 1: the call's duration (checked below) must have ticked meanwhile
        result = await measure_audio(page, "#calls > li.call audio", 2000)
        assert_audio(result, what="echo from sipp")
        duration = await card.locator(".call-duration").inner_text()
        assert re.fullmatch(r"0:0[1-9]", duration), duration  # ticks while connected

        await card.get_by_role("button", name="Hang up").click()
        await wait_call(page, "DISCONNECTED")
        assert await card.get_attribute("data-reason") == "USERTERMINATED"
        assert await card.locator(".call-state").inner_text() == "You hung up"
        await screenshot(page, "04-ended")
        states = dedupe(await call_states(page, "5555"))
        assert states == ["DIALING", "RINGING", "CONNECTED", "DISCONNECTED"], states
        await assert_no_problems(page)
    assert await uas.wait(15) == 0, "sipp UAS did not complete the call"


# sipp UAC with a caller number and display name of our own (From: "Carol Caller" <4711>),
# PCMU + telephone-event; RTP is echoed by sipp's -rtp_echo; BYE after the -d pause.
UAC_NAMED = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="UAC named caller">
  <send retrans="500"><![CDATA[

INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Carol Caller" <sip:4711@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: sip:4711@[local_ip]:[local_port]
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send><![CDATA[

ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Carol Caller" <sip:4711@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
[routes]
Call-ID: [call_id]
CSeq: 1 ACK
Contact: sip:4711@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause/>
  <send retrans="500"><![CDATA[

BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "Carol Caller" <sip:4711@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
[last_To:]
[routes]
Call-ID: [call_id]
CSeq: 2 BYE
Contact: sip:4711@[local_ip]:[local_port]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200" crlf="true"/>
  <timewait milliseconds="500"/>
</scenario>
"""


async def test_sip_caller_reaches_phone(gateway, sipp, e2e_dir):
    """sipp calls 1002: the banner (and the incoming handler) shows "Carol Caller (4711)",
    the phone answers, sipp echoes the browser's microphone (audio both ways), sipp's BYE
    ends the call with SUCCESS."""
    from tests.e2e.conftest import free_port

    scenario = e2e_dir / "uac_named.xml"
    scenario.write_text(UAC_NAMED)
    async with launch(e2e_dir) as browser:
        page = await browser.page("bob")
        await open_phone(page, gateway.http_url)
        await phone_login(page, "1002")
        uac = sipp.start(
            "uac",
            [
                gateway.sip_target,
                "-sf",
                str(scenario),
                "-s",
                "1002",
                "-m",
                "1",
                "-rtp_echo",
                "-d",
                "5000",
                "-timeout",
                "60s",
                "-timeout_error",
            ],
            port=free_port(),
        )
        banner = page.get_by_role("alertdialog", name="Incoming call")
        await banner.wait_for(timeout=15000)
        assert await page.locator("#incoming-caller").inner_text() == "Carol Caller (4711)"
        incoming = await events(page, "incoming")
        assert incoming and incoming[0]["number"] == "4711", incoming
        assert incoming[0]["name"] == "Carol Caller", incoming
        await wait_call(page, "RINGING")  # the phone accepted: sipp got 180
        await screenshot(page, "05-incoming")
        await banner.get_by_role("button", name="Answer", exact=True).click()
        card = await wait_call(page, "CONNECTED")
        assert await banner.is_hidden()
        result = await measure_audio(page, "#calls > li.call audio", 1000)
        assert_audio(result, what="own microphone echoed by the SIP caller")
        await wait_call(page, "DISCONNECTED", timeout=15000)  # sipp's BYE
        assert await card.get_attribute("data-reason") == "SUCCESS"
        assert await card.locator(".call-state").inner_text() == "Call ended by the other party"
        states = dedupe(await call_states(page, "4711"))
        assert states == ["RINGING", "CONNECTED", "DISCONNECTED"], states
        await assert_no_problems(page)
    assert await uac.wait(15) == 0, "sipp UAC did not complete the call"


async def _two_phones(gateway, browser):
    alice = await browser.page("alice")
    bob = await browser.page("bob")
    for page, number in ((alice, "1001"), (bob, "1002")):
        await open_phone(page, gateway.http_url)
        await phone_login(page, number)
    return alice, bob


async def test_phone_to_phone(gateway, e2e_dir):
    """Alice dials 1002 on the dial pad (mouse); Bob's banner names Alice; both hear the
    other's microphone; Bob hangs up -> Alice sees SUCCESS."""
    async with launch(e2e_dir) as browser:
        alice, bob = await _two_phones(gateway, browser)
        for digit in "1002":
            await alice.get_by_role("button", name=f"Dial {digit}", exact=True).click()
        await alice.get_by_role("button", name="Call", exact=True).click()
        await bob.get_by_role("alertdialog").wait_for(timeout=15000)
        assert await bob.locator("#incoming-caller").inner_text() == "Alice (1001)"
        await wait_call(alice, "RINGING")
        await screenshot(alice, "06-outgoing-ringing")
        await bob.get_by_role("button", name="Answer", exact=True).click()
        await wait_call(alice, "CONNECTED")
        bob_card = await wait_call(bob, "CONNECTED")
        heard = await asyncio.gather(
            measure_audio(alice, "#calls > li.call audio", 1000),
            measure_audio(bob, "#calls > li.call audio", 1000),
        )
        assert_audio(heard[0], what="Bob's microphone at Alice")
        assert_audio(heard[1], what="Alice's microphone at Bob")
        await bob_card.get_by_role("button", name="Hang up").click()
        alice_card = await wait_call(alice, "DISCONNECTED")
        assert await alice_card.get_attribute("data-reason") == "SUCCESS"
        assert await bob_card.get_attribute("data-reason") == "USERTERMINATED"
        assert dedupe(await call_states(alice, "1002")) == [
            "DIALING",
            "RINGING",
            "CONNECTED",
            "DISCONNECTED",
        ]
        for page in (alice, bob):
            await assert_no_problems(page)


async def test_phone_decline(gateway, e2e_dir):
    """Bob declines: REJECTED at Alice ("Call declined"), and at Bob ("You declined")."""
    async with launch(e2e_dir) as browser:
        alice, bob = await _two_phones(gateway, browser)
        await alice.locator("#dial-number").fill("1002")
        await alice.locator("#dial-number").press("Enter")
        await bob.get_by_role("alertdialog").wait_for(timeout=15000)
        await bob.get_by_role("button", name="Decline", exact=True).click()
        alice_card = await wait_call(alice, "DISCONNECTED")
        assert await alice_card.get_attribute("data-reason") == "REJECTED"
        assert await alice_card.locator(".call-state").inner_text() == "Call declined"
        bob_card = await wait_call(bob, "DISCONNECTED")
        assert await bob_card.get_attribute("data-reason") == "REJECTED"
        assert await bob_card.locator(".call-state").inner_text() == "You declined the call"
        assert await bob.get_by_role("alertdialog").is_hidden()
        await screenshot(alice, "07-declined")
        for page in (alice, bob):
            await assert_no_problems(page)


async def test_phone_survives_reload(gateway, e2e_dir):
    """A reload during a call: the phone restores the login from sessionStorage, the call
    comes back CONNECTED with a new WebRTC leg and the echo is heard again."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("alice")
        await open_phone(page, gateway.http_url)
        await phone_login(page, "1001")
        await page.locator("#dial-number").fill("9000")
        await page.get_by_role("button", name="Call", exact=True).click()
        await wait_call(page, "CONNECTED")
        identifier = await page.evaluate("() => window.phone.rtc.getLoginIdentifier()")
        await page.reload()
        await page.wait_for_selector("#status[data-state='SUCCESS']", timeout=15000)
        assert await page.evaluate("() => window.phone.rtc.getLoginIdentifier()") == identifier
        card = await wait_call(page, "CONNECTED")
        assert await card.locator(".call-remote-name").inner_text() == "9000"
        assert await card.locator(".call-direction").get_attribute("title") == "Outgoing"
        restored = await events(page, "restored")
        assert restored and restored[0]["state"] == "CONNECTED", restored
        result = await measure_audio(page, "#calls > li.call audio", 1000)
        assert_audio(result, what="echo after the reload")
        await screenshot(page, "08-restored-after-reload")
        await card.get_by_role("button", name=re.compile("^Hold")).click()
        await wait_call(page, "HELD")
        assert await card.locator(".call-state").inner_text() == "On hold"
        await screenshot(page, "08b-on-hold")
        await card.get_by_role("button", name=re.compile("^Retrieve")).click()
        await wait_call(page, "CONNECTED")
        await card.get_by_role("button", name="Hang up").click()
        await wait_call(page, "DISCONNECTED")
        await assert_no_problems(page)


async def test_phone_small_screen_and_keyboard(gateway, e2e_dir):
    """Phone width: everything fits (no horizontal scroll); every control has a name; the
    login works from the keyboard alone."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("mobile", width=390, height=844)
        await open_phone(page, gateway.http_url)
        await page.get_by_label("Your number").focus()
        await page.keyboard.type("1001")
        await page.keyboard.press("Enter")  # submits the form
        await page.wait_for_selector("#status[data-state='SUCCESS']", timeout=15000)
        await page.keyboard.type("9000")
        await page.keyboard.press("Enter")
        await wait_call(page, "CONNECTED")
        await screenshot(page, "09-small-screen-connected")
        unnamed = await page.evaluate(
            """() => [...document.querySelectorAll('button, input, select')]
                .filter(el => el.offsetParent !== null)
                .filter(el => !(el.getAttribute('aria-label') || el.labels?.length
                                || el.textContent.trim()))
                .map(el => el.outerHTML)"""
        )
        assert unnamed == [], unnamed
        overflow = await page.evaluate("() => document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"horizontal overflow of {overflow}px at 390px width"
        # Tab reaches the call's Hang up button; Enter activates it.
        for _ in range(40):
            await page.keyboard.press("Tab")
            name = await page.evaluate("() => document.activeElement.textContent.trim()")
            if name == "Hang up":
                break
        else:
            raise AssertionError("Hang up not reachable with Tab")
        await page.keyboard.press("Enter")
        await wait_call(page, "DISCONNECTED")
        await assert_no_problems(page)
