"""Retransmissions with sipp (issue 3): what a lost ACK or a slow far end does to a call.

- A late ACK: the gateway retransmits its 2xx (RFC 3261 §13.3.1.4) until the ACK arrives,
  and the call goes on with audio both ways (the classic "call drops at 32 s" bug is a
  UAS that stops retransmitting or never matches the late ACK).
- No ACK at all: after 64*T1 the gateway gives up, ends the dialog with a BYE and tells
  the client; nothing hangs.
- A slow UAS: the gateway's INVITE is retransmitted (timer A) and the retransmissions do
  not make a second call.
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.sipp_calls import call_from_sipp
from tests.e2e.test_calls import check_tone
from tests.e2e.test_sip_media import FAR_NUMBER, expect_exit, logged_in, uas

pytestmark = pytest.mark.e2e

FAST_T1 = "\n[sip]\nt1 = 0.1\n"  # 64*T1 = 6.4 s, so the no-ACK test is short


def invite_200s(log: str) -> int:
    """How many 200 responses to the INVITE sipp's message log holds."""
    return len(re.findall(r"SIP/2\.0 200 OK\r?\n(?:[^\r\n]+\r?\n)*?CSeq: 1 INVITE", log))


async def test_late_ack_keeps_the_call(gateway, sipp, clients):
    alice = await logged_in(clients, gateway)
    caller, call = await call_from_sipp(
        sipp, gateway, alice, "uac_late_ack.xml", extra=["-rtp_echo", "-d", "7000"]
    )  # BYE 2.2 + 7 s after the 200: the 5 s of audio checked below end by about 7.5 s
    await call.wait_state("active", timeout=20)
    # 2.2 s without an ACK, then audio: the client's tone comes back through sipp's echo
    await check_tone(call, 1000.0, seconds=4.0, what="own tone echoed after the late ACK")
    assert call.state == "active", call.states
    ended = await call.wait_state("terminated", timeout=20)
    assert ended.get("reason") == "success", ended
    await expect_exit(caller)
    count = invite_200s(caller.logs())
    # T1 = 0.5 s: retransmissions at 0.5 and 1.5 s fall inside the 2.2 s without ACK
    assert count >= 3, f"the 2xx was sent {count} times while the ACK was missing"


@pytest.mark.parametrize("gateway", [FAST_T1], indirect=True)
async def test_missing_ack_ends_the_call_with_bye(gateway, sipp, clients):
    alice = await logged_in(clients, gateway)
    caller, call = await call_from_sipp(sipp, gateway, alice, "uac_no_ack.xml")
    ended = await call.wait_state("terminated", timeout=20)
    assert ended.get("reason") not in (None, "success"), ended
    await expect_exit(caller)  # the scenario ends only after the gateway's BYE
    count = invite_200s(caller.logs())
    assert count >= 5, f"the 2xx was sent only {count} times before giving up"


async def test_slow_uas_gets_one_call_from_retransmitted_invites(gateway, sipp, clients):
    far = uas(sipp, gateway, "uas_slow_answer.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)
    call = await alice.dial(FAR_NUMBER, freq=1000.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 1000.0, what="own tone echoed by the slow UAS")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    await expect_exit(far)
    log = far.logs()
    invite = r"^INVITE sip:\S+ SIP/2\.0\r?\n(?:[^\r\n]+\r?\n)*?Call-ID: (\S+)"
    invites = re.findall(invite, log, re.M)
    assert len(invites) >= 2, f"{len(invites)} INVITE(s) reached the slow UAS: no retransmission"
    assert len(set(invites)) == 1, f"retransmissions made several calls: {set(invites)}"
