"""OPTIONS qualify (core with a fake clock, and two UserAgents) and CRLF keep-alives."""

from __future__ import annotations

import asyncio

from sip.aio.useragent import UAConfig, UserAgent
from sip.core import OptionsResult

from .test_core import CoreHarness, respond_to
from .test_useragent import FAST


class Harness(CoreHarness):
    def __init__(self) -> None:
        super().__init__()
        self.results: list[OptionsResult] = []

    def apply(self, effects: list[object]) -> None:
        super().apply(effects)
        self.results += [e for e in effects if isinstance(e, OptionsResult)]


def test_options_request_and_result():
    h = Harness()
    op, effects = h.core.options("sip:pbx@127.0.0.1:5080")
    h.apply(effects)
    options = h.last()
    assert options.method == "OPTIONS" and str(options.uri) == "sip:pbx@127.0.0.1:5080"
    assert options.cseq.method == "OPTIONS" and options.headers["Accept"] == "application/sdp"
    h.receive(respond_to(options, 100, "Trying"))
    assert h.results == []
    h.receive(respond_to(options, 404, "Not Found"))
    assert h.results == [OptionsResult(op, 404, True)]
    assert h.results[0].reachable


def test_options_timeout_and_503_are_down():
    h = Harness()
    op, effects = h.core.options("sip:127.0.0.1:5080")
    h.apply(effects)
    h.advance(40)
    assert h.results == [OptionsResult(op, 408, False)]
    op2, effects = h.core.options("sip:127.0.0.1:5080")
    h.apply(effects)
    h.receive(respond_to(h.last(), 503, "Service Unavailable"))
    assert not h.results[-1].reachable and h.results[-1].op == op2


async def test_qualify_reports_up_then_down():
    a = UserAgent(UAConfig(port=0, **FAST), lambda inv: inv.reject(603))
    b = UserAgent(UAConfig(port=0, **FAST), lambda inv: inv.reject(603))
    await a.start()
    await b.start()
    states: list[bool] = []
    changed = asyncio.Event()

    def on_state(up: bool) -> None:
        states.append(up)
        changed.set()

    try:
        a.qualify(f"sip:127.0.0.1:{b.port}", on_state, interval=0.1, timeout=0.3)
        await asyncio.wait_for(changed.wait(), 5)
        assert states == [True]
        changed.clear()
        await b.close()
        await asyncio.wait_for(changed.wait(), 5)
        assert states == [True, False]
    finally:
        await a.close()
        await b.close()


async def test_crlf_ping_is_answered_and_keepalives_are_sent():
    ua = UserAgent(UAConfig(port=0, keepalive_interval=0.1, **FAST), lambda inv: None)
    await ua.start()
    received = bytearray()
    got = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            received.extend(data)
            if b"\r\n\r\n\r\n" in received[-8:] or received.endswith(b"\r\n\r\n\r\n\r\n"):
                got.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # Pong: a double-CRLF ping to the UA gets a single CRLF back.
        reader, writer = await asyncio.open_connection("127.0.0.1", ua.port)
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.close()
        # Ping: a connection the UA opened (for an OPTIONS) gets CRLF CRLF periodically.
        ua.ping(f"sip:127.0.0.1:{port};transport=tcp", lambda up: None)
        await asyncio.wait_for(got.wait(), 5)
        assert received.startswith(b"OPTIONS ")
    finally:
        server.close()
        await ua.close()
