"""json-v1: the gateway's main client protocol (shared/protocols/json-v1.md).

This module only translates between JSON messages and the core's commands and
events; the call logic lives in gateway.core.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from gateway import __version__
from gateway.auth import AuthResult
from gateway.call import Reason
from gateway.commands import (
    Accept,
    Answer,
    CallMessage,
    CallOffered,
    CallStatus,
    ClientEvent,
    Command,
    Dial,
    Hold,
    Ice,
    IceCandidate,
    MediaAnswer,
    MediaOffer,
    Offer,
    Party,
    QueryStatus,
    RegistrationEnded,
    Retrieve,
    SdpAnswer,
    Terminate,
    Transfer,
)
from gateway.core import IDENTIFIER, Core, Registration
from gateway.push import valid_notification_token, valid_notification_url

logger = logging.getLogger(__name__)

VERSION = 1
SERVER_DESCRIPTION = f"webrtc-gateway {__version__}"
# Bounded outgoing queue per client: a client that stops reading is disconnected
# rather than growing memory without limit.
OUTBOX_LIMIT = 256


class ProtocolError(Exception):
    """A message that cannot be understood; answered with reason `error`."""


def party_from_wire(value: Any) -> Party | None:
    if isinstance(value, str):
        return Party(value)
    if isinstance(value, dict):
        dial = value.get("dialString", "")
        name = value.get("displayName", "")
        if isinstance(dial, str) and isinstance(name, str):
            return Party(dial, name)
    return None


def party_to_wire(party: Party) -> dict[str, str]:
    return {"dialString": party.dial_string, "displayName": party.display_name}


def _candidates(value: Any) -> tuple[IceCandidate, ...]:
    if not isinstance(value, list):
        raise ProtocolError("ice must be a list")
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("candidate"), str):
            raise ProtocolError("bad ice candidate")
        mid = item.get("sdpMid")
        index = item.get("sdpMLineIndex")
        out.append(
            IceCandidate(
                item["candidate"],
                mid if isinstance(mid, str) else None,
                index if isinstance(index, int) and not isinstance(index, bool) else None,
            )
        )
    return tuple(out)


class JsonV1Session:
    """One WebSocket connection speaking json-v1."""

    def __init__(self, core: Core, ws: ServerConnection) -> None:
        self.core = core
        self.ws = ws
        self.reg: Registration | None = None
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_LIMIT)
        self._closing = False
        self._close_code: int = CloseCode.NORMAL_CLOSURE
        self._assignment = "new"
        # Set at the HTTP upgrade by gateway.http (None when no check ran).
        self.auth: AuthResult | None = getattr(ws, "auth", None)

    # -- outgoing ----------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        if self._closing:
            return
        message = {"version": VERSION, **message}
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self._close(CloseCode.TRY_AGAIN_LATER, "client is not reading")

    def on_event(self, event: ClientEvent) -> None:
        if isinstance(event, CallOffered):
            start = {
                "operation": "signaling", "action": "start", "identifier": event.call_id,
                "remoteAddress": party_to_wire(event.remote),
                "localAddress": party_to_wire(event.local),
            }
            if event.headers:
                start["sipHeaders"] = dict(event.headers)
            self.send(start)
        elif isinstance(event, CallStatus):
            msg: dict[str, Any] = {
                "operation": "signaling", "action": "status", "identifier": event.call_id,
                "state": str(event.state),
            }
            if event.reason is not None:
                msg["reason"] = str(event.reason)
            if event.remote is not None:
                msg["remoteAddress"] = party_to_wire(event.remote)
            self.send(msg)
        elif isinstance(event, MediaOffer | MediaAnswer):
            action = "offer" if isinstance(event, MediaOffer) else "answer"
            self.send({"operation": "media", "action": action, "identifier": event.call_id,
                       "sdp": event.sdp})
        elif isinstance(event, RegistrationEnded):
            self._register_terminated(event.reason)
        elif isinstance(event, CallMessage):
            # json-v1 has no message vocabulary (protocols/json-v1.md): a client could not
            # tell it from an unknown operation and must not be sent one. The SIP sender
            # already had its 200 (RFC 3428 pager mode), so the text is logged and dropped.
            logger.info(
                "call %s: %s message (%d bytes) from the far end dropped: json-v1 cannot "
                "carry it", event.call_id, event.content_type or "untyped", len(event.body),
            )

    def _register_status(self) -> None:
        assert self.reg is not None
        message = {
            "operation": "register", "action": "status", "state": "active",
            "identifier": self.reg.identifier, "assignment": self._assignment,
            "localAddress": party_to_wire(self.reg.party),
            "localSideDescription": SERVER_DESCRIPTION,
        }
        if self.core.push is not None:
            message["notificationConfiguration"] = self.core.push.notification_configuration
        self.send(message)

    def _store_push_token(self, message: dict[str, Any]) -> None:
        """notificationToken/notificationUrl from register start or status (§7, §8)."""
        if self.reg is None or "notificationToken" not in message:
            return
        token, url = message.get("notificationToken"), message.get("notificationUrl")
        if token not in (None, "") and not valid_notification_token(token):
            raise ProtocolError("bad notificationToken")
        if url not in (None, "") and not valid_notification_url(url):
            raise ProtocolError("bad notificationUrl")
        self.core.set_push_token(self.reg, token or None, url or None)

    def _register_terminated(self, reason: Reason, code: int = CloseCode.NORMAL_CLOSURE) -> None:
        self.send({"operation": "register", "action": "status", "state": "terminated",
                   "reason": str(reason)})
        self._close(code, f"register terminated: {reason}")

    async def _writer(self) -> None:
        while True:
            message = await self._outbox.get()
            if message is None:
                await self.ws.close(self._close_code)
                return
            await self.ws.send(json.dumps(message))

    # -- incoming ----------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._writer())
        query = parse_qs(urlsplit(self.ws.request.path).query) if self.ws.request else {}
        try:
            if "wakeupToken" in query:
                await self._wakeup(query["wakeupToken"][0], query.get("identifier", [""])[0])
            elif "identifier" in query:
                await self._restore(query["identifier"][0])
            elif self.auth is not None and self.auth.token_nonce is not None:
                await self._takeover()
            async for frame in self.ws:
                if self._closing:
                    # Keep reading while our close handshake runs: the peer's close frame
                    # may sit behind frames it sent meanwhile.
                    continue
                if isinstance(frame, bytes):
                    self._close(CloseCode.UNSUPPORTED_DATA, "binary frame")
                    continue
                try:
                    message = json.loads(frame)
                except ValueError:
                    message = None
                if not isinstance(message, dict):
                    self._close(CloseCode.INVALID_DATA, "not a JSON object")
                    continue
                if message.get("version") != VERSION or isinstance(message.get("version"), bool):
                    self._register_terminated(Reason.ERROR, CloseCode.PROTOCOL_ERROR)
                    continue
                await self._dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            if self.reg is not None:
                # A lost connection keeps the registration for the restore grace period.
                self.core.detach(self.reg)
                self.reg = None
            if not writer.done():
                writer.cancel()

    async def _restore(self, identifier: str) -> None:
        """Attach this connection to a registration that lost its connection (§7)."""
        reg = None
        if IDENTIFIER.match(identifier):
            reg = self.core.restore(identifier, self.on_event, self.auth)
        if reg is None:
            logger.info("restore of %r refused: unknown, expired or not yours", identifier[:128])
            self._register_terminated(Reason.ERROR)
            return
        self._attach(reg, "restored")
        await self.core.resume_calls(reg)

    async def _wakeup(self, token: str, identifier: str) -> None:
        """A connection woken by a push notification for an incoming call (§8)."""
        reg = self.core.wakeup(token, identifier, self.on_event, self.auth)
        if reg is None:
            logger.info("wake-up for %r refused: unknown, used or expired", identifier[:128])
            self._register_terminated(Reason.ERROR)
            return
        self._attach(reg, "wakeup")
        await self.core.resume_calls(reg)

    async def _takeover(self) -> None:
        """A refreshed token with the nonce of a live registration's token (§2)."""
        assert self.auth is not None
        taken = self.core.takeover(self.auth, self.on_event)
        if taken is None:
            return  # no such registration: an ordinary login follows
        reg, was_detached = taken
        self._attach(reg, "restored")
        if was_detached:
            await self.core.resume_calls(reg)

    def _attach(self, reg: Registration, assignment: str) -> None:
        self.reg = reg
        reg.disconnect = self._taken_over
        self._assignment = assignment
        self._register_status()

    def _taken_over(self) -> None:
        # The registration now belongs to the new connection: leave it alone on close.
        self.reg = None
        self._close(CloseCode.NORMAL_CLOSURE, "registration taken over by a refreshed token")

    def _close(self, code: int, why: str) -> None:
        if self._closing:
            return
        logger.info("closing %s: %s", self.ws.remote_address, why)
        self._closing = True
        self._close_code = code
        try:
            self._outbox.put_nowait(None)
        except asyncio.QueueFull:
            # The client is not reading: skip what is queued and close now.
            asyncio.get_running_loop().create_task(self.ws.close(code))

    async def _dispatch(self, message: dict[str, Any]) -> None:
        operation = message.get("operation")
        action = message.get("action")
        try:
            if operation == "register":
                await self._on_register(action, message)
            elif operation in ("signaling", "media"):
                await self._on_call(operation, action, message)
            else:
                raise ProtocolError(f"unknown operation {operation!r}")
        except ProtocolError as exc:
            logger.info("client %s: %s", self.ws.remote_address, exc)
            self._error_reply(message)

    def _error_reply(self, message: dict[str, Any]) -> None:
        """Answer a message we cannot act on; the connection stays open (json-v1 §3)."""
        operation = message.get("operation")
        if operation not in ("register", "signaling", "media"):
            operation = "register"
        reply: dict[str, Any] = {"operation": operation, "action": "status", "reason": "error"}
        if operation == "register":
            reply["state"] = "active" if self.reg is not None else "terminated"
            if self.reg is not None:
                reply["identifier"] = self.reg.identifier
        else:
            reply["operation"] = "signaling"
            identifier = message.get("identifier")
            call = None
            if isinstance(identifier, str) and self.reg is not None:
                call = self.reg.calls.get(identifier)
                reply["identifier"] = identifier
            reply["state"] = str(call.state) if call is not None else "terminated"
        self.send(reply)

    async def _on_register(self, action: Any, message: dict[str, Any]) -> None:
        if action == "start":
            if self.reg is not None:
                raise ProtocolError("already registered")
            local = party_from_wire(message.get("localAddress", {}))
            if local is None:
                raise ProtocolError("bad localAddress")
            description = message.get("localSideDescription", "")
            if not isinstance(description, str):
                description = ""
            result = await self.core.register(local.dial_string, local.display_name, description,
                                        self.on_event, self.auth)
            if isinstance(result, Reason):
                self._register_terminated(result)
                return
            self._attach(result, "new")
            self._store_push_token(message)
        elif action == "status":
            if self.reg is None:
                raise ProtocolError("not registered")
            self._store_push_token(message)
            self._register_status()
        elif action == "terminate":
            if self.reg is None:
                raise ProtocolError("not registered")
            self.core.unregister(self.reg, Reason.USER_TERMINATED)
            self.reg = None
            self._register_terminated(Reason.USER_TERMINATED)
        else:
            raise ProtocolError(f"unknown register action {action!r}")

    async def _on_call(self, operation: str, action: Any, message: dict[str, Any]) -> None:
        identifier = message.get("identifier")
        if not isinstance(identifier, str) or not IDENTIFIER.match(identifier):
            raise ProtocolError("bad call identifier")
        if self.reg is None:
            raise ProtocolError("not registered")
        for command in self._commands(operation, action, identifier, message):
            await self.core.handle(self.reg, command)

    def _commands(
        self, operation: str, action: Any, identifier: str, message: dict[str, Any]
    ) -> list[Command]:
        sdp = message.get("sdp")
        if operation == "media":
            if action not in ("offer", "answer"):
                raise ProtocolError(f"unknown media action {action!r}")
            if sdp is not None and not isinstance(sdp, str):
                raise ProtocolError("sdp must be a string")
            commands: list[Command] = []
            if sdp is not None:
                commands.append(
                    Offer(identifier, sdp) if action == "offer" else SdpAnswer(identifier, sdp)
                )
            if "ice" in message:
                commands.append(Ice(identifier, _candidates(message["ice"])))
            if not commands:
                raise ProtocolError("media message without sdp or ice")
            return commands
        if action == "start":
            remote = party_from_wire(message.get("remoteAddress"))
            if remote is None:
                raise ProtocolError("signaling start without remoteAddress")
            local = party_from_wire(message.get("localAddress", {}))
            headers = message.get("sipHeaders", {})
            if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
            ):
                raise ProtocolError("sipHeaders must map header names to strings")
            return [
                Dial(identifier, remote, local.display_name if local else "",
                     tuple(headers.items()))
            ]
        if action == "status":
            return [QueryStatus(identifier)]
        if action == "accept":
            return [Accept(identifier)]
        if action == "answer":
            return [Answer(identifier)]
        if action == "terminate":
            reason = Reason.from_wire(message.get("reason", "userTerminated"))
            return [Terminate(identifier, reason)]
        if action == "hold":
            return [Hold(identifier)]
        if action == "retrieve":
            return [Retrieve(identifier)]
        if action == "transfer":
            other = message.get("transferIdentifier")
            if other is not None:
                if not isinstance(other, str) or not IDENTIFIER.match(other):
                    raise ProtocolError("bad transferIdentifier")
                return [Transfer(identifier, other_call_id=other)]
            target = party_from_wire(message.get("remoteAddress"))
            if target is None or not target.dial_string:
                raise ProtocolError("transfer needs transferIdentifier or remoteAddress")
            return [Transfer(identifier, target=target)]
        raise ProtocolError(f"unknown signaling action {action!r}")
