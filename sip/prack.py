"""Reliable provisional responses (RFC 3262, 100rel) for both sides of an INVITE.

UAC: a 1xx with `Require: 100rel` and `RSeq` creates an early dialog; we answer it with
PRACK (`RAck: rseq cseq INVITE`) and deliver it once: retransmissions and out-of-order
RSeqs are dropped. The confirmed dialog continues the early dialog's CSeq numbering.

UAS: when the INVITE requires 100rel, or supports it and the 1xx carries SDP, our 1xx
goes out with `Require: 100rel` and an RSeq; it is retransmitted from T1 doubling
(unreliable transports) until a PRACK with the matching RAck arrives, and after 64*T1
without one the INVITE is rejected with 500 and the session ends (Terminated("timeout")).
Only one reliable 1xx is unacknowledged at a time; later ones wait. A 2xx waits for the
PRACK of a 1xx that carried SDP (RFC 3262 §3).

A mixin of `sip.core.UserAgentCore`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sipmessage import Request, Response

from . import events
from .dialog import Dialog, DialogId
from .effects import CancelTimer, StartTimer, Transmit
from .invite_session import (
    EarlyDialog,
    IncomingSession,
    OutgoingSession,
    ReliableProvisional,
    ReliableState,
    Session,
)
from .messages import encode, from_tag, to_tag
from .peer import Peer
from .transaction_layer import LayerEffect, TransactionKey, TransactionLayer
from .ua_effects import Effect

if TYPE_CHECKING:
    from .core import CoreConfig

REL = "100rel"
MAX_RSEQ = 2**31 - 1


def is_reliable(response: Response) -> int | None:
    """The RSeq of a reliable provisional response, else None."""
    if not 100 < response.code < 200:
        return None
    if REL not in (tag.lower() for tag in response.require):
        return None
    value = (response.headers.get("RSeq") or "").strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_RSEQ:
        return None
    return int(value)


def parse_rack(value: str) -> tuple[int, int, str] | None:
    """RAck "rseq cseq method" (RFC 3262 §7.2), or None when malformed."""
    parts = value.split()
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2].upper()


class ReliableProvisionals:
    config: CoreConfig
    layer: TransactionLayer
    sessions: dict[str, Session]
    _client_txns: dict[TransactionKey, tuple[str, str]]
    _dialogs: dict[DialogId, str]
    _early_uas: dict[DialogId, str]
    _hex: Callable[[int], str]

    # -- provided by UserAgentCore ---------------------------------------------------

    def _run(self, layer_effects: list[LayerEffect]) -> list[Effect]:
        raise NotImplementedError

    def _via(self, transport: str) -> str:
        raise NotImplementedError

    def _dialog_peer(self, s: Session, dialog: Dialog) -> Peer:
        raise NotImplementedError

    def _end(self, s: Session, event: events.SessionEvent) -> list[Effect]:
        raise NotImplementedError

    def _response_for(
        self, s: IncomingSession, code: int, reason: str | None, sdp: bytes | None
    ) -> Response:
        raise NotImplementedError

    def _reply(
        self, key: TransactionKey, request: Request, code: int, *, tag: str | None = None
    ) -> list[Effect]:
        raise NotImplementedError

    def answer(self, sid: str, sdp: bytes) -> list[Effect]:
        raise NotImplementedError

    # -- UAC -------------------------------------------------------------------------

    def _uac_reliable(
        self, s: OutgoingSession, response: Response, rseq: int
    ) -> tuple[list[Effect], bool]:
        """PRACK a reliable 1xx; (effects, deliver it to the owner)."""
        tag = to_tag(response)
        if not tag:
            return [], True  # no early dialog possible: treat as unreliable
        early = s.early.get(tag)
        if early is None:
            early = EarlyDialog(Dialog.from_uac(s.invite, response))
            s.early[tag] = early
        if early.rseq is not None and rseq != early.rseq + 1:
            return [], False  # a retransmission, or out of order (its predecessor comes)
        early.rseq = rseq
        dialog = early.dialog
        if response.headers.getlist("Contact"):
            # Remote target refresh by each reliable 1xx (RFC 3262 §4).
            dialog.remote_target = Dialog.from_uac(s.invite, response).remote_target
        prack = dialog.create_request("PRACK")
        peer = self._dialog_peer(s, dialog)
        prack.headers.add("Via", self._via(peer.transport))
        prack.headers.set("RAck", f"{rseq} {s.invite.cseq.sequence} INVITE")
        prack.headers.set("User-Agent", self.config.user_agent)
        key, layer_effects = self.layer.send_request(prack, peer)
        self._client_txns[key] = (s.id, "prack")
        s.transactions.add(key)
        return self._run(layer_effects), True

    def _continue_early_cseq(self, s: OutgoingSession, dialog: Dialog) -> None:
        """The confirmed dialog's CSeq continues after the early dialog's PRACKs."""
        early = s.early.get(dialog.remote_tag)
        if early is not None:
            dialog.local_seq = max(dialog.local_seq, early.dialog.local_seq)

    # -- UAS -------------------------------------------------------------------------

    def _reliable_wanted(self, s: IncomingSession, sdp: bytes | None) -> bool:
        if not self.config.prack:
            return False
        invite = s.invite
        if REL in (tag.lower() for tag in invite.require):
            return True
        supported = REL in (tag.lower() for tag in invite.supported)
        # Reliable early media only when the INVITE carried the offer (our SDP answers
        # it); a reliable 1xx offer would need the answer from the PRACK.
        return supported and sdp is not None and bool(invite.body)

    def _provisional(self, s: IncomingSession, code: int, sdp: bytes | None) -> list[Effect]:
        """Send a reliable 1xx now, or queue it behind the unacknowledged one."""
        if s.reliable is None:
            s.reliable = ReliableState(next_rseq=1 + int(self._hex(3), 16) % 2**20)
        if s.reliable.outstanding is not None:
            s.reliable.waiting.append((code, sdp))
            return []
        return self._send_reliable(s, code, sdp)

    def _send_reliable(self, s: IncomingSession, code: int, sdp: bytes | None) -> list[Effect]:
        state = s.reliable
        assert state is not None
        rseq = state.next_rseq
        state.next_rseq += 1
        response = self._response_for(s, code, None, sdp)
        response.headers.set("Require", REL)
        response.headers.set("RSeq", str(rseq))
        data = encode(response)
        t1 = self.config.timers.t1
        state.outstanding = ReliableProvisional(rseq, data, t1, sdp is not None)
        remote = from_tag(s.invite) or ""
        self._early_uas[DialogId(s.invite.call_id, s.local_tag, remote)] = s.id
        effects = self._run(self.layer.respond(s.key, response))
        if not s.response_peer.reliable:
            effects.append(StartTimer(("uas", s.id, "rel"), t1))
        effects.append(StartTimer(("uas", s.id, "relgiveup"), self.config.timers.timeout))
        return effects

    def _stop_reliable(self, s: IncomingSession) -> list[Effect]:
        if s.reliable is None:
            return []
        s.reliable.outstanding = None
        s.reliable.waiting.clear()
        return [CancelTimer(("uas", s.id, "rel")), CancelTimer(("uas", s.id, "relgiveup"))]

    def _answer_deferred(self, s: IncomingSession, sdp: bytes) -> bool:
        """answer() while a 1xx with SDP awaits its PRACK: hold the 2xx back."""
        state = s.reliable
        if state is None or state.outstanding is None or not state.outstanding.has_sdp:
            return False
        state.deferred_answer = sdp
        return True

    def _reliable_timer(self, s: IncomingSession, what: str) -> list[Effect]:
        state = s.reliable
        if state is None or state.outstanding is None or s.final or s.ended:
            return []
        out = state.outstanding
        if what == "rel":
            out.interval *= 2  # RFC 3262 §3: doubles, no T2 cap
            return [
                Transmit(s.response_peer, out.data),
                StartTimer(("uas", s.id, "rel"), out.interval),
            ]
        # "relgiveup": 64*T1 without PRACK - reject the INVITE with a 5xx.
        effects = self._stop_reliable(s)
        s.final = True
        response = self._response_for(s, 500, "Provisional Response Not Acknowledged", None)
        effects += self._run(self.layer.respond(s.key, response))
        return effects + self._end(s, events.Terminated("timeout"))

    def _on_prack(self, key: TransactionKey, request: Request) -> list[Effect]:
        dialog_id = DialogId(request.call_id, to_tag(request) or "", from_tag(request) or "")
        sid = self._early_uas.get(dialog_id) or self._dialogs.get(dialog_id)
        s = self.sessions.get(sid) if sid else None
        if not isinstance(s, IncomingSession) or s.reliable is None:
            return self._reply(key, request, 481, tag=dialog_id.local_tag)
        state = s.reliable
        rack = parse_rack(request.headers.get("RAck") or "")
        invite_seq = s.invite.cseq.sequence
        out = state.outstanding
        if rack is not None and rack[1:] == (invite_seq, "INVITE") and rack[0] in state.acked:
            return self._reply(key, request, 200, tag=s.local_tag)  # a repeated PRACK
        if out is None or rack != (out.rseq, invite_seq, "INVITE"):
            return self._reply(key, request, 481, tag=s.local_tag)
        effects = self._reply(key, request, 200, tag=s.local_tag)
        state.acked.add(out.rseq)
        state.outstanding = None
        effects += [CancelTimer(("uas", s.id, "rel")), CancelTimer(("uas", s.id, "relgiveup"))]
        if s.final or s.ended:
            return effects
        if state.deferred_answer is not None:
            sdp, state.deferred_answer = state.deferred_answer, None
            state.waiting.clear()
            return effects + self.answer(s.id, sdp)
        if state.waiting:
            code, waiting_sdp = state.waiting.popleft()
            effects += self._send_reliable(s, code, waiting_sdp)
        return effects
