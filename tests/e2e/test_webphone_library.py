"""The client library (/client/webrtc-client.js) driven through its API in headless
Chromium, on the test bench page gateway/static/test/library.html (window.bench records
every login state, incoming call, call state and refused request; RTCDTMFSender tones).

Tests for gateway features that are not implemented yet are written against the spec
(json-v1.md) and skipped with the missing server feature as the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import pytest

from tests.e2e.conftest import HOST, SCENARIOS, free_port
from tests.e2e.webphone_helpers import (
    assert_audio,
    assert_no_problems,
    bench_events,
    call_state_js,
    call_states,
    launch,
    login_js,
    measure_audio,
    open_bench,
    open_phone,
    phone_login,
    screenshot,
    wait_bench,
    wait_call,
)

pytestmark = pytest.mark.e2e

TONE_HZ = 1000.0  # test number 9001


async def bench_login(
    page,
    who: str,
    number: str,
    *,
    username: str = "",
    password: str = "",
    server: str = "location.host",
) -> None:
    await page.evaluate(
        f"""() => {{
            const rtc = window.{who} = window.bench.make({json.dumps(who)});
            rtc.login({server}, false, false, {json.dumps(username)}, {json.dumps(password)},
                      {json.dumps(number)});
        }}"""
    )


async def bench_logged_in(page, base_url: str) -> None:
    """The bench page open and instance `a` logged in as 1001 (SUCCESS)."""
    await open_bench(page, base_url)
    await bench_login(page, "a", "1001")
    await wait_bench(page, login_js("SUCCESS", "a"))


async def bench_dial(page, who: str, number: str) -> int:
    """Dial `number` from instance `who`; returns the bench's call index."""
    return await page.evaluate(
        f"""() => {{
            const call = window.{who}.watch(window.{who}.createOutgoingCall());
            call.dial({json.dumps(number)});
            return window.bench.calls.indexOf(call);
        }}"""
    )


def states_of(events: list[dict], call: int) -> list[str]:
    return [e["state"] for e in events if e["type"] == "call-state" and e["call"] == call]


async def test_library_echo_number_dtmf_and_two_calls(gateway, e2e_dir):
    """Two calls at once: 9000 (echo: the fake microphone's 400 Hz) and 9001 (1 kHz), each
    heard in its own audio element; sendDigit plays RFC 4733 tones through RTCDTMFSender;
    disconnect() -> DISCONNECTED with USERTERMINATED; logout -> LOGGED_OUT_EXPLICIT."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await bench_logged_in(page, gateway.http_url)
        assert await page.evaluate("() => a.getLocalDialString()") == "1001"
        assert await page.evaluate("() => a.getLocalDisplayName()") == "Alice"
        assert re.fullmatch(
            r"[A-Za-z0-9_-]{1,128}", await page.evaluate("() => a.getLoginIdentifier()")
        )

        echo = await bench_dial(page, "a", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))
        tone = await bench_dial(page, "a", "9001")
        await wait_bench(page, call_state_js("CONNECTED", tone))
        echo_heard, tone_heard = await asyncio.gather(
            measure_audio(page, f"#audio-{echo}", 2500), measure_audio(page, f"#audio-{tone}", 2000)
        )
        assert_audio(echo_heard, what="echo number")
        assert_audio(tone_heard, TONE_HZ, what="tone number")

        sent = await page.evaluate(
            f"() => ['1', '2', '#', 'x'].map(d => window.bench.calls[{echo}].sendDigit(d))"
        )
        assert sent == [True, True, True, False]
        await page.wait_for_function("() => window.bench.tones.length >= 3", timeout=5000)
        assert await page.evaluate("() => window.bench.tones") == ["1", "2", "#"]
        info = await page.evaluate(
            f"""() => {{ const c = window.bench.calls[{echo}];
                return [c.getState(), c.getRemoteNumber(), c.getLocalNumber(), c.getLocalName(),
                        c.getMediaVideoActive(), c.hasAudioElement(), c.hasVideoElements(),
                        c.getDisconnectReason()]; }}"""
        )
        assert info == ["CONNECTED", "9000", "1001", "Alice", False, True, False, None]

        await page.evaluate(f"() => window.bench.calls[{echo}].disconnect()")
        await wait_bench(page, call_state_js("DISCONNECTED", echo))
        events = await bench_events(page)
        ended = [e for e in events if e["type"] == "call-state" and e["state"] == "DISCONNECTED"]
        assert ended[0]["reason"] == "USERTERMINATED", ended
        assert states_of(events, echo) == ["DIALING", "CONNECTED", "DISCONNECTED"]
        # The other call is still there; logout ends it.
        assert await page.evaluate(f"() => window.bench.calls[{tone}].getState()") == "CONNECTED"
        await page.evaluate("() => a.logout()")
        await wait_bench(page, login_js("LOGGED_OUT_EXPLICIT", "a"))
        await wait_bench(page, call_state_js("DISCONNECTED", tone))
        assert (
            await page.evaluate(f"() => window.bench.calls[{tone}].getDisconnectReason()")
            == "USERTERMINATED"
        )
        await assert_no_problems(page)


async def test_library_reconnects_after_network_drop(gateway, e2e_dir):
    """The WebSocket drops mid-call: CONNECTION_LOST, then the library reconnects with
    back-off and restores with the login identifier (?identifier=): SUCCESS with the same
    identifier, the call stays CONNECTED and is heard again on a new WebRTC leg."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await bench_logged_in(page, gateway.http_url)
        identifier = await page.evaluate("() => a.getLoginIdentifier()")
        echo = await bench_dial(page, "a", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))

        # Cut the connection the way a network drop does (no register/terminate).
        await page.evaluate("() => window.__sockets.at(-1).close(4000, 'test drop')")
        await wait_bench(page, login_js("CONNECTION_LOST", "a"))
        await wait_bench(page, login_js("SUCCESS", "a", 2), timeout=20000)
        assert await page.evaluate("() => a.getLoginIdentifier()") == identifier
        sockets = await page.evaluate("() => window.__sockets.map(s => s.url)")
        assert len(sockets) == 2 and f"identifier={identifier}" in sockets[1], sockets
        logins = [e["state"] for e in await bench_events(page, "login")]
        assert logins == ["CONNECTING", "SUCCESS", "CONNECTION_LOST", "CONNECTING", "SUCCESS"]
        assert await page.evaluate(f"() => window.bench.calls[{echo}].getState()") == "CONNECTED"
        await asyncio.sleep(0.5)
        assert_audio(await measure_audio(page, f"#audio-{echo}", 1000), what="echo after reconnect")
        await page.evaluate(f"() => window.bench.calls[{echo}].disconnect()")
        await wait_bench(page, call_state_js("DISCONNECTED", echo))
        await assert_no_problems(page)


ICE_UFRAGS_JS = """(pc) => [pc.localDescription, pc.remoteDescription].map(
    (d) => (d && /a=ice-ufrag:(\\S+)/.exec(d.sdp) || [])[1])"""


async def _restart_answered(page, before: list[str], timeout: float) -> None:
    """Until the page's last peer connection has applied an answer with a remote ufrag
    other than before[1] (an ICE restart answered)."""
    await page.wait_for_function(
        f"""(before) => {{ const pc = window.__pcs.at(-1);
            const now = ({ICE_UFRAGS_JS})(pc);
            return pc.signalingState === "stable" && now[1] && now[1] !== before[1]; }}""",
        arg=before,
        timeout=timeout,
    )


async def _fast_forward_until_answered(page, before: list[str], seconds: int) -> None:
    """Move the page's clock (page.clock.install()) on by a second at a time, with a
    moment of real time between for what the timers start, until an ICE restart is
    answered (`_restart_answered`), at most `seconds` seconds of page time."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    for _ in range(seconds):
        await page.clock.fast_forward(1000)
        try:
            await _restart_answered(page, before, 300)
            return
        except PlaywrightTimeout:
            continue
    await _restart_answered(page, before, 1000)


async def _echo_call_ends_unharmed(page, echo: int) -> None:
    """Bench call `echo` went DIALING -> CONNECTED only, no request failed; hang up."""
    events = await bench_events(page)
    assert not [e for e in events if e["type"] == "request-failed"], events
    assert states_of(events, echo) == ["DIALING", "CONNECTED"]
    await page.evaluate(f"() => window.bench.calls[{echo}].disconnect()")
    await wait_bench(page, call_state_js("DISCONNECTED", echo))
    await assert_no_problems(page)


async def _alice_calls_bob(browser, base_url: str):
    """Web phones alice (1001) and bob (1002); alice calls bob, who answers (audio)."""
    alice = await browser.page("alice")
    bob = await browser.page("bob")
    for page, number in ((alice, "1001"), (bob, "1002")):
        await open_phone(page, base_url)
        await phone_login(page, number)
    await alice.locator("#dial-number").fill("1002")
    await alice.get_by_role("button", name="Call", exact=True).click()
    await bob.get_by_role("alertdialog").wait_for(timeout=15000)
    await bob.get_by_role("button", name="Answer", exact=True).click()
    return alice, bob


async def _ice_fails_once(page, before: list[str]) -> list[str]:
    """Make the page's last peer connection report ICE "failed" once, as Chromium does
    when consent is lost (the restart that follows is Chromium's own); wait until the
    library's restart is answered and ICE connected again; the new [local, remote]
    ufrags, both changed."""
    await page.evaluate(
        """() => {
            const pc = window.__pcs.at(-1);
            Object.defineProperty(pc, "iceConnectionState", {
                configurable: true,
                get() { delete pc.iceConnectionState; return "failed"; },
            });
            pc.dispatchEvent(new Event("iceconnectionstatechange"));
        }"""
    )
    await _restart_answered(page, before, 15000)
    after = await page.evaluate(f"() => ({ICE_UFRAGS_JS})(window.__pcs.at(-1))")
    assert after[0] != before[0] and after[1] != before[1], (before, after)
    await page.wait_for_function(
        "() => ['connected', 'completed'].includes(window.__pcs.at(-1).iceConnectionState)",
        timeout=15000,
    )
    await asyncio.sleep(1.0)  # the new pair nominated on both sides
    return after


async def test_library_restarts_ice_when_the_path_breaks(gateway, e2e_dir):
    """Chromium reports ICE failed (as after a network change): the library restarts ICE
    (json-v1 §10) with a re-offer carrying new credentials, the gateway answers with new
    ones of its own, the new checks succeed, and the echo is heard again on the same
    peer connection; the call never leaves CONNECTED and nothing is reported failed."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await bench_logged_in(page, gateway.http_url)
        echo = await bench_dial(page, "a", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))
        assert_audio(await measure_audio(page, f"#audio-{echo}", 1000), what="echo")
        pcs = await page.evaluate("() => window.__pcs.length")
        before = await page.evaluate(f"() => ({ICE_UFRAGS_JS})(window.__pcs.at(-1))")
        assert all(before), before
        await page.clock.install()  # runs on in real time until fast-forwarded

        after = await _ice_fails_once(page, before)
        assert_audio(await measure_audio(page, f"#audio-{echo}", 1000), what="echo after restart")
        assert await page.evaluate("() => window.__pcs.length") == pcs  # same connection

        # "disconnected" (reported for as long as the test says so): the library waits
        # 3 s for the path to recover by itself, then restarts; once the path is back, a
        # timer left over does not restart again.
        await page.evaluate(
            """() => {
                const pc = window.__pcs.at(-1);
                Object.defineProperty(pc, "iceConnectionState", {
                    configurable: true, get() { return "disconnected"; } });
                pc.dispatchEvent(new Event("iceconnectionstatechange"));
            }"""
        )
        # (the page's clock skips the waits: the library's timers are the page's)
        await page.clock.fast_forward(2000)
        await asyncio.sleep(0.5)  # what a timer that fired early would have done meanwhile
        assert await page.evaluate(f"() => ({ICE_UFRAGS_JS})(window.__pcs.at(-1))") == after
        await _fast_forward_until_answered(page, after, 5)
        third = await page.evaluate(
            f"""() => {{ const pc = window.__pcs.at(-1); delete pc.iceConnectionState;
                return ({ICE_UFRAGS_JS})(pc); }}"""
        )
        await page.clock.fast_forward(4000)
        await asyncio.sleep(1.0)  # a restart a left-over timer began would show by now
        assert await page.evaluate(f"() => ({ICE_UFRAGS_JS})(window.__pcs.at(-1))") == third
        assert_audio(await measure_audio(page, f"#audio-{echo}", 1000), what="echo, 2nd restart")
        await _echo_call_ends_unharmed(page, echo)
    log = gateway.log()
    assert log.count("ICE restart completed") == 2 and "client re-offer refused" not in log


async def test_called_browser_restarts_ice_in_a_web_call(gateway, e2e_dir):
    """Web phone to web phone: the called browser (which answered the gateway's offer, so
    the gateway is the controlling ICE agent toward it) restarts ICE; the gateway answers,
    roles sort themselves out, and both still hear each other's microphone."""
    async with launch(e2e_dir) as browser:
        alice, bob = await _alice_calls_bob(browser, gateway.http_url)
        for page in (alice, bob):
            await wait_call(page, "CONNECTED")
        audio = "#calls > li.call audio"
        assert_audio(await measure_audio(bob, audio, 1000), what="alice at bob")
        before = await bob.evaluate(f"() => ({ICE_UFRAGS_JS})(window.__pcs.at(-1))")
        await _ice_fails_once(bob, before)
        heard = await asyncio.gather(
            measure_audio(bob, audio, 1000), measure_audio(alice, audio, 1000)
        )
        assert_audio(heard[0], what="alice at bob after bob's ICE restart")
        assert_audio(heard[1], what="bob at alice after bob's ICE restart")
        for page in (alice, bob):
            assert (await call_states(page))[-1] == "CONNECTED"
            await assert_no_problems(page)
    assert "ICE restart completed" in gateway.log()


async def test_library_tries_an_unanswered_ice_restart_again(gateway, e2e_dir):
    """The library's ICE restart offer is lost on the way (the page drops it): after 15 s
    without an answer it is rolled back, and as the path is still reported failed the
    library restarts again 3 s later; that one is answered and the echo is heard."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await bench_logged_in(page, gateway.http_url)
        echo = await bench_dial(page, "a", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))
        await page.clock.install()  # runs on in real time until fast-forwarded
        before = await page.evaluate(f"() => ({ICE_UFRAGS_JS})(window.__pcs.at(-1))")
        await page.evaluate(
            """() => {
                const socket = window.__sockets.at(-1);
                const send = socket.send.bind(socket);
                window.__dropped = [];
                socket.send = (data) => {
                    const m = JSON.parse(data);
                    if (!window.__dropped.length && m.action === "offer" && m.sdp) {
                        window.__dropped.push(m);
                        return;
                    }
                    send(data);
                };
                const pc = window.__pcs.at(-1);
                Object.defineProperty(pc, "iceConnectionState", {
                    configurable: true, get() { return "failed"; } });
                pc.dispatchEvent(new Event("iceconnectionstatechange"));
            }"""
        )
        await page.wait_for_function("() => window.__dropped.length === 1", timeout=10000)
        # the page's clock skips the 12 s (the library's timers are the page's)
        await page.clock.fast_forward(12000)
        await asyncio.sleep(0.5)  # what a timer that fired early would have done meanwhile
        pc_state = "() => window.__pcs.at(-1).signalingState"
        assert await page.evaluate(pc_state) == "have-local-offer"  # still waiting
        # on to the 15 s rollback and the 3 s before the next restart, a second at a time
        # (each timer is set once the work before it is done)
        await _fast_forward_until_answered(page, before, 20)
        await page.evaluate("() => { delete window.__pcs.at(-1).iceConnectionState; }")
        await page.wait_for_function(
            "() => ['connected', 'completed'].includes(window.__pcs.at(-1).iceConnectionState)",
            timeout=15000,
        )
        await asyncio.sleep(1.0)
        assert_audio(await measure_audio(page, f"#audio-{echo}", 1000), what="echo after retry")
        await _echo_call_ends_unharmed(page, echo)
    assert gateway.log().count("ICE restart completed") == 1


async def test_library_login_failures(gateway, e2e_dir):
    """SERVER_ACCESS when the upgrade fails (wrong path: 404; nothing listening), or the
    number is refused; DIAL_STRING_MISSING without a number; LOGIN_RESTORE_FAILED for an
    unknown identifier; dialing while logged out ends the call with ERROR."""
    closed = free_port()
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await open_bench(page, gateway.http_url)
        await bench_login(page, "p", "1001", server="location.host + '/nowhere'")
        await bench_login(page, "c", "1001", server=json.dumps(f"{HOST}:{closed}"))
        await bench_login(page, "n", "")
        await bench_login(page, "u", "4242")
        await page.evaluate(
            """() => {
                window.r = window.bench.make("r");
                window.restoreStarted = [
                    r.tryRestoreLogin(location.host, false, false, "no such id!", r.onRestore),
                    r.tryRestoreLogin(location.host, false, false, "unknownIdentifier123",
                                      r.onRestore),
                ];
            }"""
        )
        await wait_bench(page, login_js("SERVER_ACCESS", "p"))
        await wait_bench(page, login_js("SERVER_ACCESS", "c"))
        await wait_bench(page, login_js("DIAL_STRING_MISSING", "n"))
        await wait_bench(page, login_js("SERVER_ACCESS", "u"))
        await wait_bench(page, login_js("LOGIN_RESTORE_FAILED", "r"))
        assert await page.evaluate("() => window.restoreStarted") == [False, True]
        # No reconnect loop after a refused login: one connection attempt each.
        await asyncio.sleep(1.5)
        for who in "pcnur":
            states = [e["state"] for e in await bench_events(page, "login", who)]
            assert states[0] == "CONNECTING" and len(states) == 2, (who, states)
        call = await bench_dial(page, "p", "9000")
        await wait_bench(page, call_state_js("DISCONNECTED", call))
        assert (
            await page.evaluate(f"() => window.bench.calls[{call}].getDisconnectReason()")
            == "ERROR"
        )
        await assert_no_problems(page)


async def test_phone_login_error_shown(gateway, e2e_dir):
    """The phone says in words why a login failed (a number that is not in the directory)."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("phone")
        await open_phone(page, gateway.http_url)
        await page.get_by_label("Your number").fill("4242")
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_selector("#status[data-state='SERVER_ACCESS']", timeout=15000)
        assert "Cannot access the server" in await page.get_by_role("alert").inner_text()
        await screenshot(page, "10-login-refused")
        await assert_no_problems(page)


async def test_demo_call_me_page(gateway, e2e_dir):
    """/client/demo-call-me.html: one button, a token login, a call to the configured
    number (here the echo test number, from a login with number 1001)."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("demo")
        response = await page.goto(
            f"{gateway.http_url}/client/demo-call-me.html?number=9000&from=1001&token=demo"
        )
        assert response is not None and response.ok
        await page.get_by_role("button", name="Call me").click()
        await page.wait_for_selector("#demo-status[data-state='CONNECTED']", timeout=20000)
        assert_audio(await measure_audio(page, "#demo-audio", 1000), what="demo page echo")
        await screenshot(page, "11-demo-call-me")
        await page.get_by_role("button", name="Hang up").click()
        await page.wait_for_selector("#demo-status[data-state='DISCONNECTED']", timeout=10000)
        await assert_no_problems(page)


# --------------------------------------------------------------------------- not yet served


async def test_hold_retrieve_switches_microphone(gateway, e2e_dir):
    """Two echo calls: hold() -> HELD and that call falls silent while the other is heard;
    retrieve() -> CONNECTED and it is heard again."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await bench_logged_in(page, gateway.http_url)
        first = await bench_dial(page, "a", "9000")
        await wait_bench(page, call_state_js("CONNECTED", first))
        await page.evaluate(f"() => window.bench.calls[{first}].hold()")
        await wait_bench(page, call_state_js("HELD", first))
        second = await bench_dial(page, "a", "9000")
        await wait_bench(page, call_state_js("CONNECTED", second))
        held, talking = await asyncio.gather(
            measure_audio(page, f"#audio-{first}", 2500),
            measure_audio(page, f"#audio-{second}", 2000),
        )
        assert held.get("maxRms", 0) < 0.005, f"held call not silent: {held}"
        assert_audio(talking, what="the call not on hold")
        await page.evaluate(f"() => window.bench.calls[{second}].hold()")
        await wait_bench(page, call_state_js("HELD", second))
        await page.evaluate(f"() => window.bench.calls[{first}].retrieve()")
        await wait_bench(
            page, f"events.filter(e => e.call === {first} && e.state === 'CONNECTED').length >= 2"
        )
        assert_audio(await measure_audio(page, f"#audio-{first}", 1000), what="retrieved call")
        assert await bench_events(page, "request-failed") == []
        await assert_no_problems(page)


async def test_transfer_two_calls(gateway, sipp, e2e_dir):
    """Alice talks to Bob (web) and to a SIP echo; she transfers one call to the other: both
    her calls end REDIRECTED, Bob stays CONNECTED and now hears the SIP echo of himself."""
    uas = sipp.uas_echo(gateway.pbx_port)
    async with launch(e2e_dir) as browser:
        alice, bob = await _alice_calls_bob(browser, gateway.http_url)
        await wait_call(alice, "CONNECTED")
        await alice.locator("#dial-number").fill("5555")
        await alice.get_by_role("button", name="Call", exact=True).click()  # holds Bob first
        await wait_call(alice, "CONNECTED", index=0)
        await wait_call(alice, "HELD", index=1)
        card = alice.locator("#calls > li.call").nth(0)
        await card.get_by_role("button", name=re.compile("^Transfer")).click()
        await wait_call(alice, "DISCONNECTED", index=0)
        await wait_call(alice, "DISCONNECTED", index=1)
        for i in (0, 1):
            assert (
                await alice.locator("#calls > li.call").nth(i).get_attribute("data-reason")
                == "REDIRECTED"
            )
        await wait_call(bob, "CONNECTED")
        assert_audio(
            await measure_audio(bob, "#calls > li.call audio", 1000), what="SIP echo at Bob"
        )
        await (
            bob.locator("#calls > li.call")
            .nth(0)
            .get_by_role("button", name=re.compile("^Hang up"))
            .click()
        )
        for page in (alice, bob):
            await assert_no_problems(page)
    assert await uas.wait(15) == 0


async def test_dtmf_reaches_sip_side(gateway, sipp, e2e_dir):
    """sendDigit('1'), ('2'), ('#') arrive at the SIP far end as RFC 4733 telephone-event
    packets (a UDP relay in front of sipp's echo port records them)."""
    from tests.e2e.test_sip_media import RtpRelay

    relay = await RtpRelay().start()
    try:
        xml = (SCENARIOS / "uas_pcma.xml").read_text()
        xml = xml.replace("m=audio [rtp_port] RTP/AVP 8\n", "m=audio [rtp_port] RTP/AVP 0 101\n")
        xml = xml.replace(
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:0 PCMU/8000\n      a=rtpmap:101 telephone-event/8000\n      a=fmtp:101 0-16",
        )
        scenario = e2e_dir / "uas_dtmf.xml"
        scenario.write_text(xml)
        far = sipp.start(
            "uas",
            [
                "-sf",
                str(scenario),
                "-m",
                "1",
                "-rtp_echo",
                "-key",
                "rtp_port",
                str(relay.port),
                "-timeout",
                "60s",
                "-timeout_error",
            ],
            port=gateway.pbx_port,
        )
        sipp.wait_bound(far, gateway.pbx_port)
        relay.echo_port = far.media_port
        async with launch(e2e_dir) as browser:
            page = await browser.page("bench")
            await open_bench(page, gateway.http_url)
            await bench_login(page, "a", "1001")
            await wait_bench(page, login_js("SUCCESS", "a"))
            call = await bench_dial(page, "a", "5555")
            await wait_bench(page, call_state_js("CONNECTED", call))
            for digit in "12#":
                assert await page.evaluate(f"() => window.bench.calls[{call}].sendDigit('{digit}')")
            await asyncio.sleep(2)
            events = [p[0] for pt, p in relay.to_far if pt == 101 and p]
            codes = [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]
            assert codes == [1, 2, 11], f"telephone-event codes at the SIP side: {codes}"
            await page.evaluate(f"() => window.bench.calls[{call}].disconnect()")
            await wait_bench(page, call_state_js("DISCONNECTED", call))
        assert await far.wait(15) == 0
    finally:
        relay.close()


async def test_video_browser_to_browser(gateway, e2e_dir):
    """Video mode on both phones: each remote <video> gets frames (getStats framesDecoded)
    and getMediaVideoActive() is true."""
    async with launch(e2e_dir) as browser:
        alice = await browser.page("alice")
        bob = await browser.page("bob")
        for page, number in ((alice, "1001"), (bob, "1002")):
            await open_phone(page, gateway.http_url)
            await phone_login(page, number)
            await page.get_by_role("checkbox", name="Video").check()
        await alice.locator("#dial-number").fill("1002")
        await alice.get_by_role("button", name="Call", exact=True).click()
        await bob.get_by_role("alertdialog").wait_for(timeout=15000)
        await bob.get_by_role("button", name="Answer with video").click()
        for page in (alice, bob):
            await wait_call(page, "CONNECTED")
            await page.wait_for_function(
                """() => { const v = document.querySelector('#remote-video');
                   return v && v.videoWidth > 0 && v.srcObject && !v.paused; }""",
                timeout=15000,
            )
            frames = await page.evaluate(
                """async () => { const v = document.querySelector('#remote-video');
                   await new Promise(r => setTimeout(r, 1000));
                   return v.getVideoPlaybackQuality().totalVideoFrames; }"""
            )
            assert frames > 10, frames
            assert (
                await page.locator("#calls > li.call").first.locator(".call-state").inner_text()
                == "Connected · video"
            )
        await screenshot(alice, "12-video-call")
        for page in (alice, bob):
            await assert_no_problems(page)


PASSWORD_MODE = '[auth]\nmode = "password"\n'
JWT_SECRET = "webphone-e2e-secret-" + "y" * 32
JWT_ISSUER = "https://app.example.com"
TOKEN_MODE = (
    f'[auth]\nmode = "token"\n[auth.jwt]\nissuer = "{JWT_ISSUER}"\nhs256_secret = "{JWT_SECRET}"\n'
)


@pytest.mark.parametrize("gateway", [PASSWORD_MODE], indirect=True)
async def test_password_login_through_token_endpoint(gateway, e2e_dir):
    """login() with username and password gets a JWT from POST /api/token (answering the
    gateway's challenge) and connects with ?access_token=; a wrong password gives
    SERVER_ACCESS. The phone logs in the same way, and a reload restores the login with the
    token kept in sessionStorage (the password is not stored)."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await open_bench(page, gateway.http_url)
        await bench_login(page, "w", "1001", username="alice", password="wrong")
        await wait_bench(page, login_js("SERVER_ACCESS", "w"))
        await bench_login(page, "a", "1001", username="alice", password="alice-secret")
        await wait_bench(page, login_js("SUCCESS", "a"))
        sockets = await page.evaluate("() => window.__sockets.map(s => s.url)")
        assert len(sockets) == 1 and "access_token=" in sockets[0], sockets
        echo = await bench_dial(page, "a", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))
        await page.evaluate(f"() => window.bench.calls[{echo}].disconnect()")
        await wait_bench(page, call_state_js("DISCONNECTED", echo))
        await assert_no_problems(page)

        phone = await browser.page("phone")
        await open_phone(phone, gateway.http_url)
        await phone_login(phone, "1002", "bob", "bob-secret")
        stored = await phone.evaluate("() => JSON.stringify({...localStorage, ...sessionStorage})")
        assert "bob-secret" not in stored
        await phone.reload()
        await phone.wait_for_selector("#status[data-state='SUCCESS']", timeout=15000)
        await assert_no_problems(phone)


def _carol_ha1(algorithm: str) -> str:
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]
    return h(b"1003:gw.example:carol-secret").hexdigest()


HA1_ONLY = f"""{PASSWORD_MODE}
[sip]
realm = "gw.example"

[[users]]
username = "carol"
number = "1003"
ha1_md5 = "{_carol_ha1("MD5")}"
ha1_sha256 = "{_carol_ha1("SHA-256")}"
"""


@pytest.mark.parametrize("gateway", [HA1_ONLY], indirect=True)
async def test_ha1_only_user_logs_in_with_the_library(gateway, e2e_dir):
    """carol is stored only as HA1 of "1003:gw.example:password", which no Digest answer for
    "carol" can match: the library's Digest attempt is refused and it retries once with Basic
    (allowed here because the gateway is on loopback); a wrong password still fails."""
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await open_bench(page, gateway.http_url)
        await bench_login(page, "w", "1003", username="carol", password="wrong")
        await wait_bench(page, login_js("SERVER_ACCESS", "w"))
        await bench_login(page, "c", "1003", username="carol", password="carol-secret")
        await wait_bench(page, login_js("SUCCESS", "c"))
        echo = await bench_dial(page, "c", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))
        await page.evaluate(f"() => window.bench.calls[{echo}].disconnect()")
        await wait_bench(page, call_state_js("DISCONNECTED", echo))
        await assert_no_problems(page)


@pytest.mark.parametrize("gateway", [TOKEN_MODE], indirect=True)
async def test_token_login(gateway, e2e_dir):
    """loginWithToken() with an HS256 JWT issued by 'the application server'; a token
    signed with another key gives SERVER_ACCESS."""
    import time

    import jwt

    now = int(time.time())
    good = jwt.encode(
        {"iss": JWT_ISSUER, "sub": "alice", "exp": now + 120}, JWT_SECRET, algorithm="HS256"
    )
    bad = jwt.encode(
        {"iss": JWT_ISSUER, "sub": "alice", "exp": now + 120}, "x" * 40, algorithm="HS256"
    )
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await open_bench(page, gateway.http_url)
        await page.evaluate(
            f"""() => {{
                window.t = window.bench.make("t");
                t.loginWithToken(location.host, false, {json.dumps(good)}, "alice", "1001");
                window.b = window.bench.make("b");
                b.loginWithToken(location.host, false, {json.dumps(bad)}, "alice", "1001");
            }}"""
        )
        await wait_bench(page, login_js("SUCCESS", "t"))
        await wait_bench(page, login_js("SERVER_ACCESS", "b"))
        echo = await bench_dial(page, "t", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))
        assert_audio(await measure_audio(page, f"#audio-{echo}", 1000), what="echo, token login")
        await page.evaluate(f"() => window.bench.calls[{echo}].disconnect()")
        await wait_bench(page, call_state_js("DISCONNECTED", echo))
        await assert_no_problems(page)


@pytest.mark.parametrize("gateway", [TOKEN_MODE], indirect=True)
async def test_outgoing_only_token_login(gateway, e2e_dir):
    """loginWithToken with neither username nor number: SUCCESS, no local number, and an
    outgoing call works (the "call me" case), also through /client/demo-call-me.html."""
    import time

    import jwt

    token = jwt.encode(
        {"iss": JWT_ISSUER, "exp": int(time.time()) + 120}, JWT_SECRET, algorithm="HS256"
    )
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await open_bench(page, gateway.http_url)
        await page.evaluate(
            f"""() => {{ window.t = window.bench.make("t");
                        t.loginWithToken(location.host, false, {json.dumps(token)}, "", ""); }}"""
        )
        await wait_bench(page, login_js("SUCCESS", "t"))
        assert await page.evaluate("() => t.getLocalDialString()") == ""
        echo = await bench_dial(page, "t", "9000")
        await wait_bench(page, call_state_js("CONNECTED", echo))
        await page.evaluate(f"() => window.bench.calls[{echo}].disconnect()")
        await wait_bench(page, call_state_js("DISCONNECTED", echo))
        await assert_no_problems(page)

        demo = await browser.page("demo")
        await demo.goto(f"{gateway.http_url}/client/demo-call-me.html?number=9000&token={token}")
        await demo.get_by_role("button", name="Call me").click()
        await demo.wait_for_selector("#demo-status[data-state='CONNECTED']", timeout=20000)
        await demo.get_by_role("button", name="Hang up").click()
        await demo.wait_for_selector("#demo-status[data-state='DISCONNECTED']", timeout=10000)
        await assert_no_problems(demo)


HOOK_PORT = free_port()
PUSH = f'[push]\nwebhook_url = "http://{HOST}:{HOOK_PORT}/hook"\n'


async def _webhook(bodies: asyncio.Queue) -> asyncio.AbstractServer:
    """A minimal HTTP receiver for the gateway's push webhook: queues each JSON body."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        await bodies.put(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, HOST, HOOK_PORT)


@pytest.mark.parametrize("gateway", [PUSH], indirect=True)
async def test_push_wakeup_answers_call(gateway, sipp, e2e_dir):
    """1002 stores a push token and goes away; sipp calls 1002; the gateway's webhook
    carries wakeupToken and identifier; the phone opened with them (as the service
    worker's notification click does) wakes up, shows the call and answers it."""
    from websockets.asyncio.client import connect

    bodies: asyncio.Queue = asyncio.Queue()
    hook = await _webhook(bodies)
    try:
        async with connect(gateway.ws_url) as ws:
            await ws.send(
                json.dumps(
                    {
                        "version": 1,
                        "operation": "register",
                        "action": "start",
                        "localAddress": {"dialString": "1002"},
                    }
                )
            )
            identifier = json.loads(await ws.recv())["identifier"]
            await ws.send(
                json.dumps(
                    {
                        "version": 1,
                        "operation": "register",
                        "action": "status",
                        "identifier": identifier,
                        "notificationToken": "test-device-token",
                        "notificationUrl": f"{gateway.http_url}/",
                    }
                )
            )
            await ws.recv()
        uac = sipp.uac_echo(gateway.sip_target, "1002", port=free_port(), duration_ms=5000)
        body = await asyncio.wait_for(bodies.get(), 15)
        # The webhook body: the device token beside the json-v1 §8 data message.
        assert body["token"] == "test-device-token", body
        wake = body["data"]
        assert wake["identifier"] == identifier and wake["caller"] == "sipp", wake
        assert wake["url"] == f"{gateway.http_url}/", wake
        async with launch(e2e_dir) as browser:
            page = await browser.page("bob")
            await open_phone(
                page,
                gateway.http_url,
                f"?wakeupToken={wake['wakeupToken']}&identifier={identifier}",
            )
            await page.wait_for_selector("#status[data-state='SUCCESS']", timeout=15000)
            await page.get_by_role("alertdialog").wait_for(timeout=15000)
            await page.get_by_role("button", name="Answer", exact=True).click()
            await wait_call(page, "CONNECTED")
            assert_audio(
                await measure_audio(page, "#calls > li.call audio", 1000), what="woken-up call"
            )
            card = await wait_call(page, "DISCONNECTED", timeout=15000)
            assert await card.get_attribute("data-reason") == "SUCCESS"
            await assert_no_problems(page)
        assert await uac.wait(15) == 0
    finally:
        hook.close()
