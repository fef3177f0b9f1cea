"""Composition root: builds the SIP user agent, the call core and the front ends."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
import socket

from sipmessage import URI
from websockets.asyncio.server import ServerConnection, serve

import rtc.circuit
from gateway.auth import Authenticator, StoredCredentials
from gateway.config import Config
from gateway.core import Core
from gateway.frontends.jsonv1 import JsonV1Session
from gateway.http import GatewayConnection, make_request_handler
from sip.aio.useragent import UAConfig, UserAgent
from sip.auth_server import Secret

logger = logging.getLogger(__name__)

# json-v1 §1: ping every 30 s, 90 s without pong is a lost connection.
PING_INTERVAL = 30.0
PING_TIMEOUT = 90.0


def trusted_networks(config: Config) -> tuple[str, ...]:
    """Who may send INVITEs without digest: the configured networks, or by default
    loopback and the PBX's address (resolved once at start-up)."""
    if config.sip.trusted_networks is not None:
        return config.sip.trusted_networks
    trusted = ["127.0.0.0/8", "::1/128"]
    if config.pbx.uri:
        host = URI.parse(config.pbx.uri).host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
        except OSError as exc:
            logger.warning("PBX host %s does not resolve (%s): not trusted by address", host, exc)
        else:
            trusted += sorted({str(info[4][0]) for info in infos})
    return tuple(trusted)


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        sip = config.sip
        trusted = trusted_networks(config)
        self.ua = UserAgent(
            UAConfig(
                host=sip.host,
                port=sip.port,
                user_agent=sip.user_agent,
                t1=sip.t1,
                t2=sip.t2,
                t4=sip.t4,
                realm=sip.realm,
                registrar=sip.registrar,
                trusted_networks=trusted,
                request_rate=sip.request_rate,
                request_burst=sip.request_burst,
                keepalive_interval=sip.keepalive_interval,
                tls_port=sip.tls_port,
                tls_cert=sip.tls_cert,
                tls_key=sip.tls_key,
                tls_ca=sip.tls_ca,
                tls_verify=sip.tls_verify,
                prack=sip.prack,
                session_expires=sip.session_expires,
                min_se=sip.min_se,
            ),
            on_invite=self._on_invite,
            authenticator=self._sip_password,
        )
        self.core = Core(config, self.ua)
        self.core.trusted_networks = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted
        )
        self.authenticator = Authenticator(config.auth, self._password)
        self._server: object | None = None

    # Credentials come from local sources only: LDAP users have none here (LDAP checks
    # them by binding), and these run on the event loop, where an LDAP query would block.
    # A user may have a password, stored HA1 values (H(number:SIP realm:password)), or both.
    def _password(self, username: str) -> StoredCredentials | None:
        return self.core.directory.web_credentials(username)

    def _sip_password(self, number: str) -> Secret | None:
        # SIP phones authenticate as their number (the user part of the AOR they register).
        return self.core.directory.sip_secret(number)

    def _on_invite(self, invite):  # type: ignore[no-untyped-def]
        self.core.on_invite(invite)

    async def _ws_handler(self, ws: ServerConnection) -> None:
        await JsonV1Session(self.core, ws).run()

    async def start(self) -> None:
        await self.ua.start()
        pbx = self.config.pbx
        if pbx.uri is not None and pbx.register and pbx.username is not None:
            host = URI.parse(pbx.uri)
            aor = str(URI(scheme="sip", host=host.host, port=host.port, user=pbx.username))
            self.ua.register(
                aor,
                pbx.uri,
                (pbx.username, pbx.password or ""),
                pbx.register_expires,
                lambda update: logger.info(
                    "trunk registration at %s: %s %s", pbx.uri, update.state, update.code or ""
                ),
            )
        if pbx.uri is not None and pbx.qualify_interval:
            self.ua.qualify(pbx.uri, self.core.set_pbx_up, interval=pbx.qualify_interval)
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
        if rtc.circuit.NATIVE:
            logger.info("pass-through calls: relayed by rtc._relay (C)")
        else:
            logger.warning(
                "rtc._relay was not built (no C compiler or Python headers when installed): "
                "pass-through calls take the Python step, about 1.5 times the CPU "
                "(install gcc and python3-dev, then reinstall)"
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # type: ignore[attr-defined]
        await self.core.close()
        await self.ua.close()


async def run(config: Config) -> None:
    gateway = Gateway(config)
    await gateway.start()
    # Everything that exists now (modules, configuration, the directory) lives as
    # long as the process: keep it out of the collector's full passes, which stop
    # every call's media while they run (~25 ms fewer per pass measured with 32
    # calls; bench/README.md).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await gateway.stop()
