"""SIP under loss and against fraud (issue 3): 20 consecutive calls through a relay that
drops 10% of SIP datagrams both ways all complete and end cleanly; an INVITE from an
untrusted address that cannot authenticate gets 403 and never reaches a client."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.e2e.client import JsonV1Client
from tests.e2e.conftest import HOST, SCENARIOS, free_port

pytestmark = pytest.mark.e2e

UNTRUSTED = "\n[sip]\ntrusted_networks = []\n"


class LossyRelay(asyncio.DatagramProtocol):
    """Forwards SIP datagrams between one client and the gateway, dropping `loss` of them
    in each direction (seeded, so a failure can be replayed)."""

    def __init__(self, gateway_port: int, loss: float, seed: int) -> None:
        self.port = free_port(tcp=False)
        self.gateway = (HOST, gateway_port)
        self.client: tuple[str, int] | None = None
        self.rng = random.Random(seed)
        self.loss = loss
        self.dropped = self.passed = 0
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> LossyRelay:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(HOST, self.port)
        )
        return self

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.gateway:
            target = self.client
        else:
            self.client, target = addr, self.gateway
        if target is None:
            return
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.passed += 1
        self.transport.sendto(data, target)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def test_twenty_calls_through_ten_percent_loss(gateway, sipp):
    relay = await LossyRelay(gateway.sip_port, 0.10, seed=4475).start()
    try:
        caller = sipp.start(
            "uac_relay",
            [
                f"{HOST}:{relay.port}",
                "-sf",
                str(SCENARIOS / "uac_relay.xml"),
                "-s",
                "9000",
                "-key",
                "relay_port",
                str(relay.port),
                "-m",
                "20",
                "-l",
                "1",
                "-d",
                "200",
                "-timeout",
                "240s",
                "-timeout_error",
            ],
            port=free_port(),
        )
        code = await caller.wait(240)
        assert code == 0, f"sipp exited {code}: not every call completed\n{caller.logs()[-4000:]}"
        # 20 calls' datagrams crossed the relay both ways (six a call: INVITE, 100, 200,
        # ACK, BYE, 200; a lost 100 is never resent), and some were lost.
        assert relay.passed + relay.dropped >= 20 * 5, (relay.dropped, relay.passed)
        assert relay.dropped >= 5, (relay.dropped, relay.passed)
    finally:
        relay.close()


@pytest.mark.parametrize("gateway", [UNTRUSTED], indirect=True)
async def test_untrusted_invite_gets_403_and_no_call(gateway, sipp, clients):
    bob: JsonV1Client = await clients(gateway, name="bob")
    await bob.login("1002", "Bob")
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    fraud = sipp.scenario(
        "uac_bad_auth",
        "uac_bad_auth.xml",
        gateway.sip_target,
        port=free_port(),
        number="1001",
        extra=["-au", "1002", "-ap", "wrong-password"],
    )
    assert await fraud.wait(30) == 0, fraud.logs()[-3000:]
    await asyncio.sleep(0.5)
    assert alice.incoming.empty(), "an unauthenticated INVITE reached a client"
