"""The asyncio SIP transport's UDP send on uvloop, the gateway's loop."""

import asyncio

import uvloop

from sip.aio.transport import Transport
from sip.peer import Peer


async def unsendable() -> list[Peer]:
    failed: list[Peer] = []
    transport = Transport("127.0.0.1", 0, lambda *_: None, failed.append)
    await transport.start()
    try:
        # an IPv6 address from an IPv4 socket, a host name: uvloop's sendto raises
        # ValueError for both
        for host in ("::1", "pbx.invalid"):
            transport.send(Peer("UDP", host, 5060), b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        await asyncio.sleep(0.05)
        return failed
    finally:
        await transport.close()


def test_udp_send_to_an_unsendable_address_fails_that_peer_on_uvloop() -> None:
    """Reported as a transport error for the peer (the transaction fails at once),
    instead of raising out of the user agent's effect runner."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        failed = runner.run(unsendable())
    assert [p.host for p in failed] == ["::1", "pbx.invalid"]
