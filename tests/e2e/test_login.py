"""Login rules beyond authentication (json-v1 §2, §7): who may hold which number, the
directory-assigned mode, outgoing-only tokens, token-refresh takeover, and the call
records every call leaves behind (`webrtc-gateway calls`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import jwt
import pytest

from tests.e2e.client import RATE, JsonV1Client
from tests.e2e.conftest import REPO
from tests.e2e.test_calls import check_tone

pytestmark = pytest.mark.e2e

SECRET = "e2e-login-secret-" + "y" * 32
ISSUER = "https://app.example.com"
TOKEN_MODE = f'[auth]\nmode = "token"\n[auth.jwt]\nissuer = "{ISSUER}"\nhs256_secret = "{SECRET}"\n'
DIRECTORY_MODE = TOKEN_MODE + '[directory]\nnumber_assignment = "directory"\n'


def token(sub: str | None = None, nonce: str | None = None, lifetime: int = 120) -> str:
    claims: dict[str, object] = {"iss": ISSUER, "exp": int(time.time()) + lifetime}
    if sub is not None:
        claims["sub"] = sub
    headers = {"nonce": nonce} if nonce else None
    return jwt.encode(claims, SECRET, algorithm="HS256", headers=headers)


@pytest.mark.parametrize("gateway", [TOKEN_MODE], indirect=True)
async def test_token_user_may_only_claim_its_own_number(gateway, clients):
    mallory: JsonV1Client = await clients(
        gateway, name="alice-as-bob", query=f"access_token={token('alice')}"
    )
    status = await mallory.register("1002", "Not Bob")
    assert status.get("state") == "terminated" and status.get("reason") == "permission", status
    alice: JsonV1Client = await clients(
        gateway, name="alice", query=f"access_token={token('alice')}"
    )
    status = await alice.login("1001")
    assert status["localAddress"]["dialString"] == "1001"
    assert status["localAddress"]["displayName"] == "Alice"  # from the directory


@pytest.mark.parametrize("gateway", [DIRECTORY_MODE], indirect=True)
async def test_directory_assigns_the_number(gateway, clients):
    bob: JsonV1Client = await clients(gateway, name="bob", query=f"access_token={token('bob')}")
    # The client's dial string is ignored in this mode.
    status = await bob.login("1001")
    assert status["localAddress"]["dialString"] == "1002", status
    nobody: JsonV1Client = await clients(
        gateway, name="ghost", query=f"access_token={token('ghost')}"
    )
    status = await nobody.register("")
    assert status.get("state") == "terminated" and status.get("reason") == "dialString", status


@pytest.mark.parametrize("gateway", [TOKEN_MODE], indirect=True)
async def test_outgoing_only_token_calls_out_but_holds_no_number(gateway, clients):
    anon: JsonV1Client = await clients(gateway, name="call-me", query=f"access_token={token()}")
    status = await anon.login("")
    assert status["localAddress"]["dialString"] == "", status
    call = await anon.dial("9000", freq=600.0)
    await call.wait_state("active", timeout=20)
    await check_tone(call, 600.0, what="echo for an outgoing-only login")
    claimer: JsonV1Client = await clients(gateway, name="claimer", query=f"access_token={token()}")
    status = await claimer.register("1001")
    assert status.get("state") == "terminated" and status.get("reason") == "permission", status


@pytest.mark.parametrize("gateway", [TOKEN_MODE], indirect=True)
async def test_refreshed_token_takes_the_registration_over(gateway, clients):
    first: JsonV1Client = await clients(
        gateway, name="first", query=f"access_token={token('alice', nonce='n-42')}"
    )
    status = await first.login("1001")
    call = await first.dial("9000", freq=900.0)
    await call.wait_state("active", timeout=20)
    await call.wait_audio(1.5, timeout=20)

    second: JsonV1Client = await clients(
        gateway, name="second", query=f"access_token={token('alice', nonce='n-42')}"
    )
    taken = await second.wait_message(lambda m: m.get("operation") == "register")
    assert taken.get("state") == "active", taken
    assert taken.get("identifier") == status["identifier"], taken
    assert await first.wait_closed() == 1000
    # The page keeps its peer connection: audio goes on, and the call answers to the
    # new connection.
    resumed_at = time.monotonic()
    await call.wait_audio(1 / RATE, since=resumed_at, timeout=2.0)  # any, within 2 s
    await second.send({"operation": "signaling", "action": "status", "identifier": call.identifier})
    reply = await second.wait_message(
        lambda m: m.get("identifier") == call.identifier and m.get("action") == "status"
    )
    assert reply.get("state") == "active", reply


async def call_records(gateway, at_least: int) -> list[dict]:
    """`webrtc-gateway calls --json`, polled until `at_least` records were written (the
    writer thread stores them shortly after the calls end)."""
    deadline = time.monotonic() + 10
    while True:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "calls",
                "--config",
                str(gateway.config_path),
                "--json",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        if len(records) >= at_least or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.5)


async def test_calls_leave_records(gateway, clients):
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("9000", freq=500.0)
    await call.wait_state("active", timeout=20)
    await asyncio.sleep(1.0)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    await alice.send(
        {
            "operation": "signaling",
            "action": "start",
            "identifier": "bad-1",
            "remoteAddress": {"dialString": "not a number!"},
        }
    )
    await alice.wait_message(lambda m: m.get("identifier") == "bad-1")

    records = await call_records(gateway, at_least=2)
    by_id = {r["call_id"]: r for r in records}
    echo = by_id[call.identifier]
    assert echo["direction"] == "outgoing" and echo["reason"] == "userTerminated", echo
    assert echo["remote_number"] == "9000" and echo["local_number"] == "1001", echo
    assert echo["answer_time"] is not None and echo["end_time"] >= echo["answer_time"], echo
    assert echo["client_codec"], echo
    failed = by_id["bad-1"]
    assert failed["reason"] == "dialString" and failed["answer_time"] is None, failed


async def test_sip_call_record_has_both_legs_statistics(gateway, sipp, clients):
    uas = sipp.uas_echo(gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=500.0)
    await call.wait_state("active", timeout=20)
    await call.wait_audio(2.0, timeout=20)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await uas.wait(15) == 0
    records = await call_records(gateway, at_least=1)
    (record,) = records
    assert record["sip_call_id"] and record["sip_code"] == 200, record
    assert record["far_codec"] == "PCMU" and record["client_codec"], record
    stats = record["stats"]
    assert stats["far"]["packets_received"] > 50 and stats["far"]["packets_sent"] > 50, stats
    assert stats["client"]["packets_received"] > 50, stats
