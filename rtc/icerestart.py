"""
ICE restart (RFC 8445 section 9, RFC 8839 section 4.4.1.1.1) on aiortc's ICE
transports, which cannot restart by themselves: RTCIceTransport.start() runs
once, and every later description reuses its first credentials, so a
browser's restart offer (new ice-ufrag/ice-pwd, e.g. after its network
changed) would be answered with the old ones and its new checks would fail.

The restart happens in place, on the same aioice Connection: the same local
candidates (sockets), new local credentials, the remote candidates and the
check list of the new description, then the checks again. The pair in use
keeps carrying media until a new pair is nominated (RFC 8445 section 9: "the
agent continues to use the previously selected pair"), and the DTLS
association and SRTP keys stay: a restart of DTLS (new fingerprint) is a new
session, which this does not do.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aioice.ice import CandidatePair, Connection
from aioice.utils import random_string
from aiortc import RTCIceParameters, RTCIceTransport

logger = logging.getLogger(__name__)

# The checks of a restart must succeed within this time, else the transport fails
# (as consent expiry would fail it: RFC 7675 gives 30 s).
RESTART_TIMEOUT = 30.0


# The Connection attributes a restart replaces (and abandon() restores).
_RESTARTED = (
    "_local_username",
    "_local_password",
    "remote_username",
    "remote_password",
    "_remote_candidates",
    "_remote_candidates_end",
    "_check_list",
)


class IceRestart:
    """
    One restart of one ICE transport, from new local credentials (at once, so
    that the next description carries them) to a newly nominated pair
    (``run``, once the far end's new credentials are known).
    """

    def __init__(self, transport: RTCIceTransport) -> None:
        if transport.state != "completed":
            raise ValueError(f"ICE restart while ICE is {transport.state}")
        self.transport = transport
        connection: Any = transport._connection
        self.connection: Connection = connection
        # what carries media until a new pair is nominated
        self.previous: dict[int, CandidatePair] = dict(connection._nominated)
        self.started = False  # run() called
        self.done = False
        # what abandon() puts back
        self._saved = {name: getattr(connection, name) for name in _RESTARTED}
        self._saved_end = transport.iceGatherer._remote_candidates_end
        consent = connection._query_consent_task
        if consent is not None:
            consent.cancel()  # the old pair's consent; connect() starts the new one's
            connection._query_consent_task = None
        for pair in connection._check_list:
            if pair.task is not None:
                pair.task.cancel()
        connection._local_username = random_string(4)
        connection._local_password = random_string(22)
        connection.remote_username = None
        connection.remote_password = None
        connection._remote_candidates = []
        connection._remote_candidates_end = False
        transport.iceGatherer._remote_candidates_end = False
        connection._check_list = []
        connection._check_list_done = False
        connection._check_list_state = asyncio.Queue()
        connection._nominating = set()
        connection._early_checks.clear()
        connection._early_checks_done = False
        # connect() completes once a pair is nominated for every component, so the
        # nominated pairs start empty; until then the previous ones send and receive
        connection._nominated = {}
        connection.recvfrom = self._recvfrom
        connection.sendto = self._sendto

    def pair(self, component: int = 1) -> CandidatePair | None:
        """The pair that carries media now: the new one once nominated, else the previous."""
        return self.connection._nominated.get(component) or self.previous.get(component)

    async def _recvfrom(self) -> tuple[bytes, int]:
        # Connection.recvfrom refuses while nothing is nominated; the previous pair
        # still delivers
        result = await self.connection._queue.get()
        if result is None:
            raise ConnectionError("Connection lost while receiving data")
        return result

    async def _sendto(self, data: bytes, component: int) -> None:
        pair = self.pair(component)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        await pair.protocol.send_data(data, pair.remote_addr)

    async def run(self, remote: RTCIceParameters, timeout: float | None = None) -> bool:
        """
        The checks with the far end's new credentials, up to a nominated pair
        (True). On failure or timeout the connection is closed, which fails
        the ICE transport (and so the peer connection) as a consent loss would.
        """
        connection = self.connection
        connection.remote_username = remote.usernameFragment
        connection.remote_password = remote.password
        connection.remote_is_lite = bool(remote.iceLite)
        try:
            await asyncio.wait_for(connection.connect(), timeout or RESTART_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            logger.info("ICE restart failed: %s", str(exc) or "timeout")
            self.cancel()
            await connection.close()
            return False
        self.cancel()
        logger.info("ICE restart completed: %s", connection._nominated.get(1))
        return True

    def abandon(self) -> None:
        """
        The restart's description was not applied (before ``run``): back to the
        previous credentials, candidates and pair, with consent checks again.
        """
        if self.started or self.done:
            return
        connection: Any = self.connection
        for name, value in self._saved.items():
            setattr(connection, name, value)
        self.transport.iceGatherer._remote_candidates_end = self._saved_end
        connection._check_list_done = True
        connection._early_checks.clear()
        connection._early_checks_done = True
        self.cancel()
        if connection.remote_password is not None:
            connection._query_consent_task = asyncio.create_task(connection.query_consent())

    def cancel(self) -> None:
        """
        Done with the restart's fall-back (checks over, restart abandoned or the
        transport closing): Connection's own methods again, which see the
        nominated pairs, the previous ones if none was nominated.
        """
        if self.done:
            return
        self.done = True
        vars(self.connection).pop("recvfrom", None)
        vars(self.connection).pop("sendto", None)
        if not self.connection._nominated:
            self.connection._nominated = dict(self.previous)
