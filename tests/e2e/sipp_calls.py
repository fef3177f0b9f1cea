"""Calls from a sipp UAC to a web client, for the e2e tests that drive sipp scenarios.

`call_from_sipp` starts a scenario from tests/e2e/scenarios/ calling a logged-in json-v1
client through the gateway's SIP port and takes the offered call as far as the test
asks (offered, accepted, ringing, answered); what happens next is the test's.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.client import Call, JsonV1Client
from tests.e2e.conftest import Gateway, SippFactory, SippProcess

SIPP_TIMEOUT = 30  # seconds; every scenario in tests/e2e/scenarios/ is much shorter


async def call_from_sipp(
    sipp: SippFactory,
    gw: Gateway,
    client: JsonV1Client,
    xml: str,
    *,
    number: str = "1001",
    port: int | None = None,
    extra: list[str] | None = None,
    started: Callable[[SippProcess], object] | None = None,
    accept: bool = True,
    ringing: bool = False,
    answer: bool = True,
) -> tuple[SippProcess, Call]:
    """sipp runs the UAC scenario `xml` calling `number` at the gateway's SIP port, from
    local SIP port `port` (default the gateway's [pbx] port); `started` gets the sipp
    process as soon as it runs (before the INVITE can arrive). The client waits for the
    offered call (15 s), then `accept`s it (alerting), waits for `ringing` (10 s) and
    `answer`s it, each as asked. Returns the sipp process and the client's call."""
    caller = sipp.scenario(
        xml.removesuffix(".xml"),
        xml,
        gw.sip_target,
        port=gw.pbx_port if port is None else port,
        number=number,
        timeout=SIPP_TIMEOUT,
        extra=extra,
    )
    if started is not None:
        started(caller)
    call = await client.wait_incoming(timeout=15)
    if accept:
        await call.accept()
    if ringing:
        await call.wait_state("ringing", timeout=10)
    if answer:
        await call.answer()
    return caller, call
