"""Composition root: builds the SIP user agent, the call core and the front ends."""

from __future__ import annotations

import asyncio
import logging
import signal

from websockets.asyncio.server import ServerConnection, serve

from gateway.auth import Authenticator
from gateway.config import Config
from gateway.core import Core
from gateway.frontends.jsonv1 import JsonV1Session
from gateway.http import GatewayConnection, make_request_handler
from sip.aio.useragent import UAConfig, UserAgent

logger = logging.getLogger(__name__)

# json-v1 §1: ping every 30 s, 90 s without pong is a lost connection.
PING_INTERVAL = 30.0
PING_TIMEOUT = 90.0


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        sip = config.sip
        self.ua = UserAgent(
            UAConfig(host=sip.host, port=sip.port, user_agent=sip.user_agent,
                     t1=sip.t1, t2=sip.t2, t4=sip.t4),
            on_invite=self._on_invite,
        )
        self.core = Core(config, self.ua)
        self.authenticator = Authenticator(config.auth, self._password)
        self._server: object | None = None

    def _password(self, username: str) -> str | None:
        user = self.core.directory.by_username(username)
        return user.password if user is not None else None

    def _on_invite(self, invite):  # type: ignore[no-untyped-def]
        self.core.on_invite(invite)

    async def _ws_handler(self, ws: ServerConnection) -> None:
        await JsonV1Session(self.core, ws).run()

    async def start(self) -> None:
        await self.ua.start()
        server = self.config.server
        self._server = await serve(
            self._ws_handler,
            server.host,
            server.port,
            process_request=make_request_handler(server.ws_path, self.authenticator),
            create_connection=GatewayConnection,
            max_size=server.max_message_bytes,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
        )
        logger.info("listening: http://%s:%d/ and SIP %s:%d (UDP, TCP)",
                    server.host, server.port, self.config.sip.host, self.ua.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # type: ignore[attr-defined]
        await self.core.close()
        await self.ua.close()


async def run(config: Config) -> None:
    gateway = Gateway(config)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await gateway.stop()
