"""End-to-end calls through the gateway with real peers (sipp) and aiortc json-v1 clients.

Each test starts its own gateway (free ports, users alice/1001 and bob/1002, [pbx] uri at
the port where sipp listens) and checks the audio that arrives, not just the signaling.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from tests.audio import dominant_frequency, rms_dbfs
from tests.e2e.client import RATE, Call, JsonV1Client, max_playback_rate

pytestmark = pytest.mark.e2e

ECHO_NUMBER = "5555"  # any number that is not a web user goes to the [pbx] uri
MIN_LEVEL_DBFS = -40.0
FREQ_TOLERANCE_HZ = 20.0


def assert_tone(audio: np.ndarray, freq: float, what: str) -> None:
    """The received audio is a tone at `freq` (+-20 Hz) above -40 dBFS."""
    assert audio.size >= RATE, f"{what}: only {audio.size / RATE:.2f} s of audio received"
    level = rms_dbfs(audio)
    peak = dominant_frequency(audio, RATE)
    assert level > MIN_LEVEL_DBFS, f"{what}: level {level:.1f} dBFS (silence?), peak {peak:.0f} Hz"
    assert abs(peak - freq) <= FREQ_TOLERANCE_HZ, (
        f"{what}: dominant frequency {peak:.1f} Hz, expected {freq:.0f} Hz (level {level:.1f} dBFS)"
    )


async def check_tone(call: Call, freq: float, seconds: float = 2.0, what: str = "") -> None:
    """Wait for 1 s + `seconds` of audio after the call became active; check the tone in the
    part after the first second (2 s by default: at 48 kHz, 96000 samples for a dominant
    frequency to +-20 Hz and a level; assert_tone wants at least one second of them)."""
    await call.wait_audio(1.0 + seconds, timeout=20.0)
    audio = call.received_audio(since=call.active_at, skip=1.0)
    assert_tone(audio, freq, what or f"call {call.identifier}")


def assert_ringing_then_active(call: Call) -> None:
    states = call.states
    assert "active" in states, states
    if "ringing" in states:
        assert states.index("ringing") < states.index("active"), states


# --------------------------------------------------------------------------- (a) outgoing


async def test_outgoing_call_to_sip_echo(gateway, sipp, clients):
    """Client 1001 dials 5555 -> [pbx] uri -> sipp UAS echoing RTP; the 1 kHz tone returns."""
    uas = sipp.uas_echo(gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")

    call = await alice.dial(ECHO_NUMBER, freq=1000.0)
    await call.wait_state("active", timeout=20)
    assert_ringing_then_active(call)
    # the PBX speaks G.711 ([media] codecs): the browser need not send more than 8 kHz
    assert max_playback_rate(call.answer_sdp) == 8000, call.answer_sdp

    await check_tone(call, 1000.0, what="echo from sipp")

    await call.hangup()
    ended = await call.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "userTerminated", ended
    assert await uas.wait(15) == 0, "sipp UAS did not complete the call (BYE/200)"


# --------------------------------------------------------------------------- (b) incoming


async def test_incoming_call_from_sip(gateway, sipp, clients):
    """sipp UAC calls 1001; the client accepts and answers; sipp echoes the client's tone;
    sipp's BYE ends the call with reason success."""
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")

    uac = sipp.uac_echo(gateway.sip_target, "1001", port=gateway.pbx_port, duration_ms=6000)
    call = await alice.wait_incoming(timeout=15)
    start = call.start_message or {}
    remote = start.get("remoteAddress")
    remote = remote if isinstance(remote, dict) else {"dialString": remote}
    assert remote.get("dialString") == "sipp", start  # the From user of sipp's INVITE

    await call.accept()
    await call.wait_state("ringing", timeout=10)
    await call.answer()
    await call.wait_state("active", timeout=20)
    assert max_playback_rate(call.offer) == 8000, call.offer  # sipp's INVITE: PCMU

    await check_tone(call, 1000.0, what="own tone echoed by sipp UAC")

    ended = await call.wait_state("terminated", timeout=20)  # sipp sends BYE after 6 s
    assert ended.get("reason") == "success", ended
    assert await uac.wait(15) == 0, "sipp UAC did not complete the call"


# --------------------------------------------------------------------------- (c) web-to-web


async def test_web_to_web_call(gateway, clients):
    """alice (1001, 600 Hz) calls bob (1002, 1500 Hz) through the gateway; each hears the
    other; alice hangs up."""
    alice: JsonV1Client = await clients(gateway, name="alice")
    bob: JsonV1Client = await clients(gateway, name="bob")
    await alice.login("1001", "Alice")
    await bob.login("1002", "Bob")
    bob.incoming_freq = 1500.0

    call_a = await alice.dial("1002", freq=600.0)
    call_b = await bob.wait_incoming(timeout=15)
    start = call_b.start_message or {}
    remote = start.get("remoteAddress")
    remote = remote if isinstance(remote, dict) else {"dialString": remote}
    assert remote.get("dialString") == "1001", start

    await call_b.accept()
    await call_a.wait_state("ringing", timeout=10)
    await call_b.answer()
    await call_a.wait_state("active", timeout=20)
    await call_b.wait_state("active", timeout=20)

    await asyncio.gather(
        check_tone(call_a, 1500.0, what="alice hears bob"),
        check_tone(call_b, 600.0, what="bob hears alice"),
    )
    # full-band Opus between browsers
    assert max_playback_rate(call_a.answer_sdp) is None, call_a.answer_sdp
    assert max_playback_rate(call_b.offer) is None, call_b.offer

    await call_a.hangup()
    ended_a = await call_a.wait_state("terminated", timeout=10)
    ended_b = await call_b.wait_state("terminated", timeout=10)
    assert ended_a.get("reason") == "userTerminated", ended_a
    assert ended_b.get("reason") == "success", ended_b


# --------------------------------------------------------------------------- (d) errors


def _is(op: str, action: str, **fields):
    def match(m: dict) -> bool:
        if m.get("operation") != op or m.get("action") != action:
            return False
        return all(m.get(k) == v for k, v in fields.items())

    return match


async def test_protocol_errors_leave_other_calls_alone(gateway, sipp, clients):
    """Bad input on other connections gets the spec's answers (json-v1 §1, §3, §9) while a
    bystander's call keeps its audio."""
    uas = sipp.uas_echo(gateway.pbx_port)
    bystander: JsonV1Client = await clients(gateway, name="bystander")
    await bystander.login("1001", "Alice")
    call = await bystander.dial(ECHO_NUMBER, freq=1000.0)
    await call.wait_state("active", timeout=20)

    problems: list[str] = []

    async def expect(what: str, coro) -> None:
        try:
            await coro
        except Exception as e:  # noqa: BLE001 - collect every failure, report them together
            problems.append(f"{what}: {type(e).__name__}: {e}")

    # §1: unparsable JSON -> close 1007; JSON that is not an object -> 1007; binary -> 1003.
    async def closes_with(frame: str | bytes, code: int) -> None:
        c = await clients(gateway, name=f"bad frame {frame!r}")
        await c.send_raw(frame)
        got = await c.wait_closed(timeout=5)
        assert got == code, f"close code {got}, expected {code}"

    await expect("non-JSON text frame", closes_with("this is not json {", 1007))
    await expect("JSON array frame", closes_with("[1, 2, 3]", 1007))
    await expect("binary frame", closes_with(b"\x00\x01binary", 1003))

    # §3: version missing or not 1 -> register/status terminated error, then close 1002.
    async def bad_version(version) -> None:
        c = await clients(gateway, name=f"version {version!r}")
        msg = {
            "operation": "register",
            "action": "start",
            "localAddress": {"dialString": "1002", "displayName": "Bob"},
        }
        if version is not None:
            msg["version"] = version
        await c.send_raw(json.dumps(msg))
        reply = await c.wait_message(_is("register", "status"), timeout=5)
        assert reply.get("state") == "terminated" and reply.get("reason") == "error", reply
        got = await c.wait_closed(timeout=5)
        assert got == 1002, f"close code {got}, expected 1002"

    await expect("version 2", bad_version(2))
    await expect("version missing", bad_version(None))

    # §3: unknown action -> a reply with reason error; the connection stays open.
    other: JsonV1Client = await clients(gateway, name="other")

    async def unknown_action_before_login() -> None:
        n = len(other.messages)
        await other.send({"operation": "register", "action": "dance"})
        reply = await other.wait_message(lambda m: m.get("reason") == "error", 5, n)
        assert reply.get("operation") == "register", reply

    await expect("unknown register action", unknown_action_before_login())
    await expect("login after unknown action", other.login("1002", "Bob"))

    async def unknown_action_after_login() -> None:
        n = len(other.messages)
        await other.send({"operation": "signaling", "action": "frobnicate", "identifier": "x1"})
        await other.wait_message(lambda m: m.get("reason") == "error", 5, n)
        await asyncio.sleep(0.5)
        assert other.is_open, f"connection closed ({other.close_code})"
        # still usable: a register/status heartbeat gets the current register status
        n = len(other.messages)
        ident = (other.registration or {}).get("identifier")
        await other.send({"operation": "register", "action": "status", "identifier": ident})
        status = await other.wait_message(_is("register", "status"), 5, n)
        assert status.get("state") == "active", status

    await expect("unknown signaling action", unknown_action_after_login())

    # §3: a call identifier outside [A-Za-z0-9_-]{1,128} -> status terminated error.
    async def bad_identifier(ident: str) -> None:
        n = len(other.messages)
        await other.send(
            {
                "operation": "signaling",
                "action": "start",
                "identifier": ident,
                "remoteAddress": {"dialString": ECHO_NUMBER, "displayName": ""},
            }
        )
        reply = await other.wait_message(_is("signaling", "status"), 5, n)
        assert reply.get("state") == "terminated" and reply.get("reason") == "error", reply
        assert other.is_open, f"connection closed ({other.close_code})"

    await expect("identifier with bad characters", bad_identifier("bad id!/<x>"))
    await expect("identifier too long", bad_identifier("a" * 129))

    # §9: an unknown call identifier -> status terminated error.
    async def unknown_call() -> None:
        n = len(other.messages)
        await other.send({"operation": "signaling", "action": "hold", "identifier": "no-such"})
        reply = await other.wait_message(_is("signaling", "status", identifier="no-such"), 5, n)
        assert reply.get("state") == "terminated" and reply.get("reason") == "error", reply

    await expect("unknown call identifier", unknown_call())

    # The bystander's call is untouched: still active, still hearing its echo.
    after = time.monotonic()
    await expect("bystander audio", call.wait_audio(2.5, since=after, timeout=10))
    assert "terminated" not in call.states, f"bystander call ended: {call.statuses}"
    assert bystander.is_open, f"bystander connection closed ({bystander.close_code})"
    audio = call.received_audio(since=after, skip=0.5)
    try:
        assert_tone(audio, 1000.0, "bystander echo after the bad input")
    except AssertionError as e:
        problems.append(str(e))

    await call.hangup()
    await expect("bystander hangup", call.wait_state("terminated", timeout=10))
    await expect("sipp exit", _expect_exit(uas, 0))
    assert not problems, "\n".join(problems)


async def _expect_exit(sp, code: int) -> None:
    got = await sp.wait(15)
    assert got == code, f"sipp {sp.name} exited with {got}, expected {code}"


# --------------------------------------------------------------------------- (e) nobody home


async def test_incoming_call_nobody_logged_in_gets_480(gateway, sipp):
    """An INVITE for a directory number with no client logged in is answered 480."""
    uac = sipp.scenario(
        "uac480",
        "uac_expect_480.xml",
        gateway.sip_target,
        port=gateway.pbx_port,
        number="1001",
        timeout=30,
    )
    code = await uac.wait(30)
    assert code == 0, f"sipp exited with {code} (expected a 480 and exit 0)"
    assert "SIP/2.0 480" in uac.logs(), "no 480 in sipp's message log"
