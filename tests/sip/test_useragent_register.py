"""UserAgent.register against our own registrar (another UserAgent) on loopback, UDP and
TCP: digest, the binding used for a call, stop() and close() unregistering."""

from __future__ import annotations

import asyncio

import pytest

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Answered
from sip.registration import RegistrationUpdate

from .test_useragent import ANSWER, FAST, OFFER, Recorder


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_call_unregister(transport: str):
    server = UserAgent(
        UAConfig(port=0, registrar=True, **FAST),  # type: ignore[arg-type]
        lambda invite: None,
        authenticator={"1001": "pw"}.get,
    )
    invites: list[InboundInvite] = []

    def on_invite(invite: InboundInvite) -> None:
        invites.append(invite)
        invite.answer(ANSWER)

    client = UserAgent(UAConfig(port=0, **FAST), on_invite)  # type: ignore[arg-type]
    await server.start()
    await client.start()
    try:
        updates: list[RegistrationUpdate] = []
        registrar = f"sip:127.0.0.1:{server.port};transport={transport}"
        reg = client.register(
            "sip:1001@127.0.0.1", registrar, ("1001", "pw"), expires=300, on_state=updates.append
        )
        await _until(lambda: reg.registered)
        assert reg.expires == 300 and reg.code == 200
        (contact,) = server.registrar.lookup("1001")
        assert contact.startswith(f"sip:1001@127.0.0.1:{client.port}")
        # The server reaches the registered user through the binding.
        recorder = Recorder()
        server.invite(contact, from_user="2000", sdp=OFFER, on_event=recorder)
        await recorder.wait_for(Answered)
        assert invites and invites[0].request_user == "1001"
        reg.stop()
        await reg.wait_stopped(5)
        assert server.registrar.lookup("1001") == []
        assert [u.state.value for u in updates] == ["registered", "unregistered"]
        assert client.registrations == []
    finally:
        await client.close()
        await server.close()


async def test_close_unregisters_and_wrong_password_fails():
    server = UserAgent(
        UAConfig(port=0, registrar=True, **FAST),  # type: ignore[arg-type]
        lambda invite: None,
        authenticator={"1001": "pw", "1002": "pw2"}.get,
    )
    client = UserAgent(UAConfig(port=0, **FAST), lambda invite: None)  # type: ignore[arg-type]
    await server.start()
    await client.start()
    try:
        registrar = f"sip:127.0.0.1:{server.port}"
        good = client.register("sip:1001@127.0.0.1", registrar, ("1001", "pw"))
        bad = client.register("sip:1002@127.0.0.1", registrar, ("1002", "nope"))
        await _until(lambda: good.registered and bad.state.value == "failed")
        assert bad.code == 403
        assert server.registrar.lookup("1001")
        await client.close()
        assert server.registrar.lookup("1001") == []
        assert good.state.value == "unregistered" and bad.state.value == "unregistered"
    finally:
        await client.close()
        await server.close()
