"""In-dialog operations of an established INVITE session, both directions.

- re-INVITE with an offer (RFC 3261 §14), 491 glare with the §14.1 retry timers,
  one INVITE transaction at a time per dialog (later ones are queued);
- incoming re-INVITE/UPDATE (RFC 3311) offers: answered with our current SDP, or by
  the owner (`delegate_offers` -> `OfferReceived` -> `answer_offer`); late-offer
  re-INVITE (no SDP): the owner's offer (`OfferWanted` -> `answer_offer`; without an
  owner our current SDP) goes in the 2xx, the answer comes in the ACK (`RemoteAnswer`);
- INFO (RFC 6086) both ways, MESSAGE (RFC 3428) and OPTIONS answered 200;
- REFER (RFC 3515) as transferor with NOTIFY message/sipfrag progress, Replaces
  (RFC 3891) embedded in Refer-To; incoming REFER answered 202 + NOTIFY progress;
- UPDATE (RFC 3311) offers of our own (`update`), reported like re-INVITEs;
- digest retry (401/407) of in-dialog BYE/INFO/MESSAGE/REFER/NOTIFY/UPDATE/PRACK and
  re-INVITE with the credentials of the call's INVITE (UAC sessions);
- a re-INVITE that only gets provisional responses is CANCELled after
  `CoreConfig.reinvite_timeout` seconds and reported as 408 (the session goes on).

A mixin of `sip.core.UserAgentCore`; it only uses the core through the few methods
declared at the top of the class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sipmessage import Address, Request, Response

from . import events
from .auth import DigestClient, credentials_header, pick_challenge
from .dialog import Dialog
from .effects import CancelTimer, StartTimer, Transmit
from .invite_session import (
    Accepted2xx,
    IncomingSession,
    InDialogRequest,
    OutgoingSession,
    OwnReinvite,
    PendingOffer,
    Session,
)
from .messages import MAX_FORWARDS, branch_of, encode, make_response
from .peer import Peer
from .refer import (
    SIPFRAG,
    event_id,
    parse_refer_to,
    refer_to_value,
    sipfrag,
    sipfrag_status,
    subscription_terminated,
)
from .timers import glare_retry_delay
from .transaction_layer import LayerEffect, TransactionKey, TransactionLayer
from .ua_effects import (
    Effect,
    MessageDone,
    OfferReceived,
    OfferWanted,
    ReferProgress,
    ReinviteDone,
    SessionUpdate,
)

if TYPE_CHECKING:
    from .core import CoreConfig

SDP = "application/sdp"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY, MESSAGE, PRACK"
MAX_GLARE_RETRIES = 5
# Bodies of in-dialog MESSAGEs we take (bigger: 413); the whole message is capped at
# messages.MAX_MESSAGE (513) before it gets here. RFC 3428 pager mode is for short texts.
MAX_MESSAGE_BODY = 16384
# Methods whose 401/407 we answer with the INVITE's credentials (re-INVITE separately).
AUTH_RETRY = frozenset({"BYE", "INFO", "MESSAGE", "REFER", "NOTIFY", "UPDATE", "PRACK"})
REFER_EXPIRES = 60  # Subscription-State expires of our refer NOTIFYs while active


class InDialogOperations:
    config: CoreConfig
    layer: TransactionLayer
    sessions: dict[str, Session]
    _client_txns: dict[TransactionKey, tuple[str, str]]
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

    def _send_bye(self, s: Session, dialog: Dialog | None) -> list[Effect]:
        raise NotImplementedError

    if TYPE_CHECKING:  # provided by sip.session_timer.SessionTimers

        def _st_request_headers(self, s: Session) -> list[tuple[str, str]]: ...

        def _st_incoming_refresh(self, s: Session, request: Request) -> list[tuple[str, str]]: ...

        def _st_answered_ours(self, s: Session, response: Response) -> list[Effect]: ...

        def _st_restart(self, s: Session) -> list[Effect]: ...

    # -- API -------------------------------------------------------------------------

    def session_tags(self, sid: str) -> tuple[str, str]:
        """(local tag, remote tag) of the session's dialog; "" where not known yet."""
        s = self.sessions.get(sid)
        if s is None:
            return "", ""
        if s.dialog is not None:
            return s.dialog.local_tag, s.dialog.remote_tag
        if isinstance(s, IncomingSession):
            return s.local_tag, s.invite.from_address.parameters.get("tag") or ""
        return s.local.parameters.get("tag") or "", ""

    def delegate_offers(self, sid: str, delegate: bool = True) -> None:
        """Let the owner answer remote re-offers: they arrive as OfferReceived effects."""
        s = self.sessions.get(sid)
        if s is not None:
            s.usage.delegate_offers = delegate

    def reinvite(self, sid: str, sdp: bytes) -> tuple[int, list[Effect]]:
        """Send a re-INVITE offering `sdp`; returns its op number for ReinviteDone.

        Queued while another INVITE transaction of the dialog is in progress (either
        direction); reported as 481 at once when there is no dialog to send it in.
        """
        s = self.sessions.get(sid)
        if s is None:
            return 0, [ReinviteDone(sid, 0, 481, None)]
        op = s.usage.take_op()
        if s.ended or s.dialog is None:
            return op, [ReinviteDone(sid, op, 481, None)]
        s.usage.queued.append((op, sdp))
        return op, self._start_next_reinvite(s)

    def update(self, sid: str, sdp: bytes) -> tuple[int, list[Effect]]:
        """Send UPDATE (RFC 3311) offering `sdp` in the dialog; the result comes as
        ReinviteDone with the returned op (2xx and the answer, or the failure code: 481
        without a dialog, 491 when an offer is in progress either way)."""
        s = self.sessions.get(sid)
        if s is None:
            return 0, [ReinviteDone(sid, 0, 481, None)]
        op = s.usage.take_op()
        if s.ended or s.dialog is None:
            return op, [ReinviteDone(sid, op, 481, None)]
        if self._offer_blocked(s) is not None or s.usage.accepted is not None:
            return op, [ReinviteDone(sid, op, 491, None)]
        return op, self._send_update(s, op, sdp)

    def peer_allows(self, sid: str, method: str) -> bool:
        """The peer listed `method` in the Allow of its INVITE or 2xx."""
        s = self.sessions.get(sid)
        return s is not None and method.upper() in s.usage.peer_allow

    def _send_update(self, s: Session, op: int, sdp: bytes) -> list[Effect]:
        request, effects = self._send_in_dialog(s, "UPDATE", "update", sdp, SDP)
        s.usage.updates[(branch_of(request), "UPDATE")] = (op, sdp)
        return effects

    def _refresh_session(self, s: Session) -> list[Effect]:
        """RFC 4028 refresh: UPDATE without body when the peer allows it, else re-INVITE."""
        if "UPDATE" in s.usage.peer_allow:
            return self._send_in_dialog(s, "UPDATE", "st-update")[1]
        if not s.local_sdp:
            return []
        op = s.usage.take_op()
        s.usage.refresh_ops.add(op)
        s.usage.queued.append((op, s.local_sdp))
        return self._start_next_reinvite(s)

    def answer_offer(self, sid: str, sdp: bytes | None) -> list[Effect]:
        """Answer the pending remote offer (after OfferReceived), or give the offer for a
        re-INVITE without one (after OfferWanted); None rejects it (488)."""
        s = self.sessions.get(sid)
        if s is None or s.usage.remote_offer is None:
            return []
        pending, s.usage.remote_offer = s.usage.remote_offer, None
        request = pending.request
        if sdp is None:
            effects = self._respond_in_dialog(s, pending.key, request, 488)
            if request.method == "INVITE":
                s.usage.remote_invite_pending = False
                effects += self._start_next_reinvite(s)
            return effects
        s.local_sdp = sdp
        if request.method == "INVITE" and not request.body:
            return self._accept_reinvite(s, pending.key, request, sdp, offered=True)
        s.usage.remote_sdp = request.body
        if request.method == "INVITE":
            return self._accept_reinvite(s, pending.key, request, sdp, offered=False)
        return self._respond_in_dialog(s, pending.key, request, 200, sdp, SDP) + (
            self._start_next_reinvite(s)
        )

    def info(self, sid: str, content_type: str, body: bytes) -> list[Effect]:
        """Send INFO (RFC 6086) in the session's dialog; its response is not reported."""
        s = self.sessions.get(sid)
        if s is None or s.ended or s.dialog is None:
            return []
        return self._send_in_dialog(s, "INFO", "info", body, content_type)[1]

    def message(self, sid: str, content_type: str, body: bytes) -> list[Effect]:
        """Send MESSAGE (RFC 3428) in the session's dialog; its response is not reported."""
        return self.send_message(sid, content_type, body)[1]

    def send_message(self, sid: str, content_type: str, body: bytes) -> tuple[int, list[Effect]]:
        """Send MESSAGE in the session's dialog; its final status comes as a MessageDone
        effect with the returned op (481 at once when there is no live dialog)."""
        s = self.sessions.get(sid)
        if s is None:
            return 0, [MessageDone(sid, 0, 481)]
        op = s.usage.take_op()
        if s.ended or s.dialog is None:
            return op, [MessageDone(sid, op, 481)]
        request, effects = self._send_in_dialog(s, "MESSAGE", "message", body, content_type)
        s.usage.messages[(branch_of(request), "MESSAGE")] = op
        return op, effects

    def defer_messages(self, sid: str, on: bool) -> None:
        """`on`: incoming in-dialog MESSAGEs are not answered 200 at once; the
        MessageReceived event carries an op for respond_message (unanswered after 64*T1:
        504; the session ending first: 481)."""
        s = self.sessions.get(sid)
        if s is not None:
            s.usage.defer_messages = on

    def respond_message(self, sid: str, op: int, code: int) -> list[Effect]:
        """The final response (200-699) to the deferred incoming MESSAGE `op`."""
        s = self.sessions.get(sid)
        if s is None or not 200 <= code <= 699:
            return []
        pending = s.usage.pending_messages.pop(op, None)
        if pending is None:
            return []
        response = self._dialog_response(s, pending.request, code)
        effects: list[Effect] = [CancelTimer(("dlg", s.id, f"msg:{op}"))]
        return effects + self._run(self.layer.respond(pending.key, response))

    def refer(self, sid: str, target: str, replaces: str | None = None) -> tuple[int, list[Effect]]:
        """Send REFER to `target` (with an embedded Replaces when given).

        Progress comes as ReferProgress effects: NOTIFY sipfrag codes, or the REFER's
        own failure code.
        """
        s = self.sessions.get(sid)
        if s is None:
            return 0, [ReferProgress(sid, 0, 481, True)]
        op = s.usage.take_op()
        if s.ended or s.dialog is None:
            return op, [ReferProgress(sid, op, 481, True)]
        extra = [("Refer-To", refer_to_value(target, replaces))]
        if s.dialog.local.uri:
            extra.append(("Referred-By", f"<{s.dialog.local.uri}>"))
        cseq = s.dialog.local_seq + 1
        s.usage.refers[cseq] = op
        s.usage.refer_order.append(cseq)
        purpose = f"refer:{cseq}"
        return op, self._send_in_dialog(s, "REFER", purpose, extra=extra)[1]

    def notify_refer(self, sid: str, code: int, reason: str) -> list[Effect]:
        """NOTIFY the referrer of the last accepted REFER: `code` is the progress of the
        call it asked for (100, 180, 200, 486...); a final code ends the subscription."""
        s = self.sessions.get(sid)
        if s is None or s.ended or s.dialog is None or s.usage.incoming_refer is None:
            return []
        cseq = s.usage.incoming_refer
        final = code >= 200
        if final:
            s.usage.incoming_refer = None
        return self._notify(s, cseq, code, reason, final)

    # -- requests we send --------------------------------------------------------------

    def _send_in_dialog(
        self,
        s: Session,
        method: str,
        purpose: str,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> tuple[Request, list[Effect]]:
        assert s.dialog is not None
        request = s.dialog.create_request(method, body, content_type)
        peer = self._dialog_peer(s, s.dialog)
        headers = request.headers
        headers.add("Via", self._via(peer.transport))
        if method in ("INVITE", "UPDATE", "REFER", "NOTIFY"):
            headers.set("Contact", s.contact)
        if method == "INVITE":
            headers.set("Allow", ALLOW)
        for name, value in extra or []:
            headers.set(name, value)
        if method in ("INVITE", "UPDATE"):
            for name, value in self._st_request_headers(s):
                headers.set(name, value)
        headers.set("User-Agent", self.config.user_agent)
        key, layer_effects = self.layer.send_request(request, peer)
        self._client_txns[key] = (s.id, purpose)
        s.transactions.add(key)
        if method in AUTH_RETRY:
            s.usage.sent[key] = InDialogRequest(
                method, body, content_type, list(extra or []), purpose
            )
        if method == "INVITE" and s.usage.own_reinvite is not None:
            s.usage.own_reinvite.key = key
            s.usage.own_reinvite.request = request
        return request, self._run(layer_effects)

    def _start_next_reinvite(self, s: Session) -> list[Effect]:
        u = s.usage
        if (
            s.ended
            or s.dialog is None
            or not u.queued
            or u.own_reinvite is not None
            or u.remote_invite_pending
            or u.remote_offer is not None
            or u.accepted is not None
            or (isinstance(s, IncomingSession) and not s.confirmed)
        ):
            return []
        op, sdp = u.queued.popleft()
        u.own_reinvite = OwnReinvite(op, sdp)
        return self._send_own_reinvite(s, None)

    def _send_own_reinvite(self, s: Session, authorization: tuple[str, str] | None) -> list[Effect]:
        own = s.usage.own_reinvite
        assert own is not None
        own.attempts += 1
        extra = [authorization] if authorization else None
        return self._send_in_dialog(s, "INVITE", "reinvite", own.sdp, SDP, extra)[1]

    def _finish_reinvite(self, s: Session, code: int, sdp: bytes | None) -> list[Effect]:
        own, s.usage.own_reinvite = s.usage.own_reinvite, None
        if own is None:
            return []
        effects: list[Effect] = [
            CancelTimer(("dlg", s.id, "glare")),
            CancelTimer(("dlg", s.id, "reinvite-timeout")),
        ]
        effects += self._reinvite_done(s, own.op, code, sdp)
        return effects + self._start_next_reinvite(s)

    def _reinvite_done(self, s: Session, op: int, code: int, sdp: bytes | None) -> list[Effect]:
        """ReinviteDone for the owner; session-timer refreshes are internal."""
        if op in s.usage.refresh_ops:
            s.usage.refresh_ops.discard(op)
            return []
        return [ReinviteDone(s.id, op, code, sdp)]

    def _notify(self, s: Session, cseq: int, code: int, reason: str, final: bool) -> list[Effect]:
        state = "terminated;reason=noresource" if final else f"active;expires={REFER_EXPIRES}"
        extra = [("Event", f"refer;id={cseq}"), ("Subscription-State", state)]
        body = sipfrag(code, reason)
        return self._send_in_dialog(s, "NOTIFY", "notify", body, f"{SIPFRAG};version=2.0", extra)[1]

    # -- responses to our in-dialog requests -------------------------------------------

    def _on_dialog_response(
        self, s: Session, purpose: str, key: TransactionKey, response: Response
    ) -> list[Effect]:
        code = response.code
        if purpose == "reinvite":
            return self._on_reinvite_response(s, key, response)
        if code < 200:
            return []
        sent = s.usage.sent.pop(key, None)
        if code in (401, 407) and sent is not None and not s.ended:
            retry = self._retry_in_dialog(s, key, sent, response)
            if retry is not None:
                return retry
        if purpose in ("prack", "cancel-reinvite"):
            return []
        if purpose == "message" and (op := s.usage.messages.pop(key, None)) is not None:
            done: list[Effect] = [MessageDone(s.id, op, code)]
            return done + (self._gone(s, code) if code >= 300 else [])
        if purpose == "update":
            return self._on_update_response(s, key, response)
        if purpose == "st-update":
            if 200 <= code < 300:
                return self._st_answered_ours(s, response)
            if code == 408:
                return self._hang_up(s, "timeout")
            if code == 481:
                return self._gone(s, code)
            # 405/501 (no UPDATE after all), 491, 500...: refresh with re-INVITE instead.
            s.usage.peer_allow = s.usage.peer_allow - {"UPDATE"}
            return self._refresh_session(s)
        if purpose.startswith("refer:"):
            cseq = int(purpose.partition(":")[2])
            if code >= 300 and (op := s.usage.refers.pop(cseq, None)) is not None:
                s.usage.refer_order = [c for c in s.usage.refer_order if c != cseq]
                return [ReferProgress(s.id, op, code, True)] + self._gone(s, code)
            return []
        return self._gone(s, code)

    def _on_update_response(
        self, s: Session, key: TransactionKey, response: Response
    ) -> list[Effect]:
        pending = s.usage.updates.pop(key, None)
        if pending is None:
            return []
        op, sdp = pending
        code = response.code
        if 200 <= code < 300:
            self._refresh_target(s, response)
            s.local_sdp = sdp
            s.usage.remote_sdp = response.body or None
            return self._reinvite_done(s, op, code, response.body or None) + (
                self._st_answered_ours(s, response)
            )
        effects = self._reinvite_done(s, op, code, None)
        if code == 408:
            return effects + self._hang_up(s, "timeout")
        return effects + self._gone(s, code)

    def _digest_for(self, s: Session) -> DigestClient | None:
        return s.digest if isinstance(s, OutgoingSession) else None

    def _challenge_answer(
        self, s: Session, response: Response, method: str, uri: str
    ) -> tuple[str, str] | None:
        digest = self._digest_for(s)
        if digest is None:
            return None
        if response.code == 401:
            values, header = response.headers.getlist("WWW-Authenticate"), "Authorization"
        else:
            values, header = response.headers.getlist("Proxy-Authenticate"), "Proxy-Authorization"
        challenge = pick_challenge(values)
        if challenge is None:
            return None
        credentials = digest.answer(challenge, method=method, uri=uri, cnonce=self._hex(8))
        return header, credentials_header(credentials)

    def _retry_in_dialog(
        self, s: Session, key: TransactionKey, sent: InDialogRequest, response: Response
    ) -> list[Effect] | None:
        """Send an in-dialog request again with credentials for its 401/407 (once)."""
        if sent.auth_tried or s.dialog is None:
            return None
        answer = self._challenge_answer(s, response, sent.method, str(s.dialog.remote_target))
        if answer is None:
            return None
        purpose = sent.purpose
        cseq = s.dialog.local_seq + 1
        u = s.usage
        if purpose.startswith("refer:"):
            old = int(purpose.partition(":")[2])
            op = u.refers.pop(old, None)
            if op is not None:
                u.refers[cseq] = op
            u.refer_order = [cseq if c == old else c for c in u.refer_order]
            purpose = f"refer:{cseq}"
        extra = [pair for pair in sent.extra if pair[0] not in (answer[0],)] + [answer]
        if sent.method == "BYE":
            request = s.dialog.create_request("BYE")
            peer = self._dialog_peer(s, s.dialog)
            request.headers.add("Via", self._via(peer.transport))
            request.headers.set(*answer)
            request.headers.set("User-Agent", self.config.user_agent)
            new_key, layer_effects = self.layer.send_request(request, peer)
            self._client_txns[new_key] = (s.id, "bye")
            s.transactions.add(new_key)
            s.usage.sent[new_key] = InDialogRequest("BYE", b"", None, [answer], "bye", True)
            return self._run(layer_effects)
        request, effects = self._send_in_dialog(
            s, sent.method, purpose, sent.body, sent.content_type, extra
        )
        new_key = (branch_of(request), sent.method)
        if new_key in u.sent:
            u.sent[new_key].auth_tried = True
        if key in u.updates:
            u.updates[new_key] = u.updates.pop(key)
        if key in u.messages:
            u.messages[new_key] = u.messages.pop(key)
        return effects

    def _gone(self, s: Session, code: int) -> list[Effect]:
        """RFC 5057: a 481 to an in-dialog request means the peer lost the dialog."""
        if code == 481 and not s.ended:
            return self._abort_usage(s) + self._end(s, events.Terminated("gone"))
        return []

    def _on_reinvite_response(
        self, s: Session, key: TransactionKey, response: Response
    ) -> list[Effect]:
        code = response.code
        own = s.usage.own_reinvite
        current = own is not None and own.key == key
        if 200 <= code < 300:
            effects = self._ack_reinvite(s, response)
            if not current:
                return effects
            self._refresh_target(s, response)
            assert own is not None
            s.local_sdp = own.sdp
            s.usage.remote_sdp = response.body or None
            effects += self._st_answered_ours(s, response)
            return effects + self._finish_reinvite(s, code, response.body or None)
        if code < 200:
            if current and code > 100 and self.config.reinvite_timeout > 0 and own is not None:
                if not own.timing:
                    own.timing = True
                    delay = self.config.reinvite_timeout
                    return [StartTimer(("dlg", s.id, "reinvite-timeout"), delay)]
            return []
        if not current:
            return []
        assert own is not None
        if code == 491 and own.attempts <= MAX_GLARE_RETRIES:
            own.key = None
            sample = int(self._hex(2), 16)
            delay = glare_retry_delay(isinstance(s, OutgoingSession), sample)
            return [StartTimer(("dlg", s.id, "glare"), delay)]
        if (
            code in (401, 407)
            and isinstance(s, OutgoingSession)
            and s.digest
            and not own.auth_tried
        ):
            retry = self._reinvite_credentials(s, own, response)
            if retry is not None:
                own.timing = False
                return [CancelTimer(("dlg", s.id, "reinvite-timeout"))] + (
                    self._send_own_reinvite(s, retry)
                )
        effects = self._finish_reinvite(s, code, None)
        if code == 408:
            return effects + self._abort_usage(s) + self._hang_up(s, "timeout")
        return effects + self._gone(s, code)

    def _reinvite_credentials(
        self, s: OutgoingSession, own: OwnReinvite, response: Response
    ) -> tuple[str, str] | None:
        assert s.digest is not None and own.request is not None
        own.auth_tried = True
        if response.code == 401:
            values, header = response.headers.getlist("WWW-Authenticate"), "Authorization"
        else:
            values, header = response.headers.getlist("Proxy-Authenticate"), "Proxy-Authorization"
        challenge = pick_challenge(values)
        if challenge is None:
            return None
        credentials = s.digest.answer(
            challenge, method="INVITE", uri=str(own.request.uri), cnonce=self._hex(8)
        )
        return header, credentials_header(credentials)

    def _ack_reinvite(self, s: Session, response: Response) -> list[Effect]:
        """ACK a 2xx to our re-INVITE; a retransmitted 2xx gets the same ACK again."""
        sequence = response.cseq.sequence
        known = s.usage.acks.get(sequence)
        if known is not None:
            return [Transmit(known[1], known[0])]
        if s.dialog is None:
            return []
        ack = s.dialog.create_ack(sequence)
        peer = self._dialog_peer(s, s.dialog)
        ack.headers.add("Via", self._via(peer.transport))
        ack.headers.set("User-Agent", self.config.user_agent)
        data = encode(ack)
        s.usage.acks = {sequence: (data, peer)}
        return [Transmit(peer, data)]

    def _on_dialog_failure(
        self, s: Session, purpose: str, key: TransactionKey, timeout: bool
    ) -> list[Effect]:
        code = 408 if timeout else 503
        s.usage.sent.pop(key, None)
        if purpose == "update":
            pending = s.usage.updates.pop(key, None)
            effects = [] if pending is None else self._reinvite_done(s, pending[0], code, None)
            return effects + self._hang_up(s, "timeout" if timeout else "transport")
        if purpose == "st-update":
            return self._hang_up(s, "timeout" if timeout else "transport")
        if purpose == "message" and (op := s.usage.messages.pop(key, None)) is not None:
            return [MessageDone(s.id, op, code)]
        if purpose == "reinvite":
            own = s.usage.own_reinvite
            if own is None or own.key != key:
                return []
            effects = self._finish_reinvite(s, code, None)
            return (
                effects
                + self._abort_usage(s)
                + self._hang_up(s, "timeout" if timeout else "transport")
            )
        if purpose.startswith("refer:"):
            cseq = int(purpose.partition(":")[2])
            op = s.usage.refers.pop(cseq, None)
            s.usage.refer_order = [c for c in s.usage.refer_order if c != cseq]
            return [] if op is None else [ReferProgress(s.id, op, code, True)]
        return []

    def _hang_up(self, s: Session, reason: str) -> list[Effect]:
        if s.ended:
            return []
        return self._end(s, events.Terminated(reason)) + self._send_bye(s, s.dialog)

    def _abort_usage(self, s: Session) -> list[Effect]:
        """The session is ending: every re-INVITE not done yet is reported as 481."""
        u = s.usage
        effects: list[Effect] = []
        if u.own_reinvite is not None:
            effects += [
                CancelTimer(("dlg", s.id, "glare")),
                CancelTimer(("dlg", s.id, "reinvite-timeout")),
            ]
            effects += self._reinvite_done(s, u.own_reinvite.op, 481, None)
            u.own_reinvite = None
        while u.queued:
            op, _ = u.queued.popleft()
            effects += self._reinvite_done(s, op, 481, None)
        for op, _ in list(u.updates.values()):
            effects += self._reinvite_done(s, op, 481, None)
        u.updates.clear()
        effects += [CancelTimer(("st", s.id, "refresh")), CancelTimer(("st", s.id, "expire"))]
        if u.accepted is not None:
            u.accepted = None
            effects += [CancelTimer(("dlg", s.id, "2xx")), CancelTimer(("dlg", s.id, "ack"))]
        for op in list(u.pending_messages):
            effects += self.respond_message(s.id, op, 481)
        return effects

    # -- requests we receive -----------------------------------------------------------

    def _on_dialog_request(self, s: Session, key: TransactionKey, request: Request) -> list[Effect]:
        """An in-dialog request other than BYE/ACK/CANCEL in a live session."""
        method = request.method
        if method == "OPTIONS":
            response = self._dialog_response(s, request, 200)
            response.headers.set("Accept", SDP)
            return self._run(self.layer.respond(key, response))
        if method == "MESSAGE" and len(request.body) > MAX_MESSAGE_BODY:
            return self._respond_in_dialog(s, key, request, 413)
        if method == "MESSAGE" and s.usage.defer_messages:
            op = s.usage.take_op()
            s.usage.pending_messages[op] = PendingOffer(key, request)
            content_type = request.headers.get("Content-Type") or ""
            return [
                StartTimer(("dlg", s.id, f"msg:{op}"), self.config.timers.timeout),
                SessionUpdate(s.id, events.MessageReceived(content_type, request.body, op)),
            ]
        if method in ("INFO", "MESSAGE"):
            content_type = request.headers.get("Content-Type") or ""
            effects = self._respond_in_dialog(s, key, request, 200)
            if request.body or method == "MESSAGE":
                event: events.SessionEvent
                if method == "INFO":
                    event = events.InfoReceived(content_type, request.body)
                else:
                    event = events.MessageReceived(content_type, request.body)
                effects.append(SessionUpdate(s.id, event))
            return effects
        if method == "INVITE":
            return self._on_reinvite(s, key, request)
        if method == "UPDATE":
            return self._on_update(s, key, request)
        if method == "REFER":
            return self._on_refer(s, key, request)
        if method == "NOTIFY":
            return self._on_notify(s, key, request)
        return []

    def _dialog_response(
        self,
        s: Session,
        request: Request,
        code: int,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        assert s.dialog is not None
        response = make_response(
            request,
            code,
            to_tag=s.dialog.local_tag,
            server=self.config.user_agent,
            body=body,
            content_type=content_type,
        )
        if 200 <= code < 300 and request.method in ("INVITE", "UPDATE"):
            response.headers.set("Contact", s.contact)
            for name, value in self._st_incoming_refresh(s, request):
                response.headers.set(name, value)
        if request.method in ("INVITE", "OPTIONS") or code == 405:
            response.headers.set("Allow", ALLOW)
        return response

    def _respond_in_dialog(
        self,
        s: Session,
        key: TransactionKey,
        request: Request,
        code: int,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> list[Effect]:
        response = self._dialog_response(s, request, code, body, content_type)
        if code == 500:
            response.headers.set("Retry-After", str(int(self._hex(1), 16) % 10))
        effects = self._run(self.layer.respond(key, response))
        if 200 <= code < 300 and request.method in ("INVITE", "UPDATE"):
            effects += self._st_restart(s)
        return effects

    def _refresh_target(self, s: Session, message: Request | Response) -> None:
        """Remote target refresh (RFC 3261 §12.2): the Contact of INVITE/UPDATE and 2xx."""
        if s.dialog is None:
            return
        for value in message.headers.getlist("Contact"):
            try:
                contacts = Address.parse_many(value)
            except ValueError:
                return
            if contacts:
                s.dialog.remote_target = contacts[0].uri
            return

    def _offer_blocked(self, s: Session) -> int | None:
        """491 while our own offer is out (glare), 500 while a remote one is unanswered."""
        u = s.usage
        if u.own_reinvite is not None and u.own_reinvite.key is not None:
            return 491
        if u.remote_offer is not None or u.remote_invite_pending:
            return 500
        return None

    def _on_reinvite(self, s: Session, key: TransactionKey, request: Request) -> list[Effect]:
        if isinstance(s, IncomingSession) and not s.confirmed:
            # Our 2xx to the initial INVITE awaits its ACK: that transaction is not over.
            return self._respond_in_dialog(s, key, request, 500)
        blocked = self._offer_blocked(s)
        if blocked is not None:
            return self._respond_in_dialog(s, key, request, blocked)
        effects: list[Effect] = []
        if s.usage.accepted is not None:
            # A new re-INVITE implies the ACK of the previous one was lost on the way.
            s.usage.accepted = None
            effects += [CancelTimer(("dlg", s.id, "2xx")), CancelTimer(("dlg", s.id, "ack"))]
        self._refresh_target(s, request)
        local = s.local_sdp or b""
        if s.usage.delegate_offers:
            s.usage.remote_invite_pending = True
            s.usage.remote_offer = PendingOffer(key, request)
            if not request.body:
                # RFC 3264 §8: the offer says what the owner wants now. Our last SDP may
                # be an answer (a=recvonly to the peer's hold) that a resume cannot
                # undo, as the answer in the ACK may only narrow it.
                return effects + [OfferWanted(s.id)]
            return effects + [OfferReceived(s.id, request.body)]
        if not request.body:
            return effects + self._accept_reinvite(s, key, request, local, offered=True)
        s.usage.remote_sdp = request.body
        return effects + self._accept_reinvite(s, key, request, local, offered=False)

    def _accept_reinvite(
        self, s: Session, key: TransactionKey, request: Request, sdp: bytes, *, offered: bool
    ) -> list[Effect]:
        response = self._dialog_response(s, request, 200, sdp, SDP)
        data = encode(response)
        effects = self._run(self.layer.respond(key, response)) + self._st_restart(s)
        peer = self.layer.server_peer(key)
        s.usage.remote_invite_pending = False
        if peer is None:
            return effects
        timers = self.config.timers
        s.usage.accepted = Accepted2xx(request.cseq.sequence, data, peer, timers.t1, offered)
        if not peer.reliable:
            effects.append(StartTimer(("dlg", s.id, "2xx"), timers.t1))
        effects.append(StartTimer(("dlg", s.id, "ack"), timers.timeout))
        return effects

    def _on_reinvite_ack(self, s: Session, request: Request) -> list[Effect]:
        """The ACK of our 2xx to a remote re-INVITE (matched by CSeq)."""
        accepted = s.usage.accepted
        if accepted is None or request.cseq.sequence != accepted.sequence:
            return []
        s.usage.accepted = None
        effects: list[Effect] = [
            CancelTimer(("dlg", s.id, "2xx")),
            CancelTimer(("dlg", s.id, "ack")),
        ]
        if accepted.offered and request.body:
            s.usage.remote_sdp = request.body
            effects.append(SessionUpdate(s.id, events.RemoteAnswer(request.body)))
        return effects + self._start_next_reinvite(s)

    def _on_update(self, s: Session, key: TransactionKey, request: Request) -> list[Effect]:
        self._refresh_target(s, request)
        if not request.body:
            return self._respond_in_dialog(s, key, request, 200)
        blocked = self._offer_blocked(s)
        if blocked is not None:
            return self._respond_in_dialog(s, key, request, blocked)
        if s.usage.delegate_offers:
            s.usage.remote_offer = PendingOffer(key, request)
            return [OfferReceived(s.id, request.body)]
        s.usage.remote_sdp = request.body
        return self._respond_in_dialog(s, key, request, 200, s.local_sdp or b"", SDP)

    def _dialog_timer(self, s: Session, what: str) -> list[Effect]:
        u = s.usage
        if what == "glare":
            if u.own_reinvite is None or u.own_reinvite.key is not None or s.ended:
                return []
            return self._send_own_reinvite(s, None)
        if what == "reinvite-timeout":
            return self._reinvite_timed_out(s)
        if what.startswith("msg:") and what[4:].isdigit():
            # The owner never answered the deferred MESSAGE (RFC 4320: no 408 here).
            return self.respond_message(s.id, int(what[4:]), 504)
        accepted = u.accepted
        if accepted is None or s.ended:
            return []
        if what == "2xx":
            accepted.interval = min(accepted.interval * 2, self.config.timers.t2)
            return [
                Transmit(accepted.peer, accepted.data),
                StartTimer(("dlg", s.id, "2xx"), accepted.interval),
            ]
        if what == "ack":
            # RFC 3261 §13.3.1.4: no ACK for our 2xx within 64*T1 - end the dialog.
            u.accepted = None
            effects: list[Effect] = [CancelTimer(("dlg", s.id, "2xx"))]
            return effects + self._abort_usage(s) + self._hang_up(s, "timeout")
        return []

    def _reinvite_timed_out(self, s: Session) -> list[Effect]:
        """Our re-INVITE got only 1xx for `reinvite_timeout` s: CANCEL it, report 408.

        The session goes on with the previous offer/answer; the 487 that follows the
        CANCEL (or a late 2xx, which is ACKed) no longer belongs to a current re-INVITE.
        """
        own = s.usage.own_reinvite
        if own is None or own.request is None or own.key is None or s.ended:
            return []
        invite = own.request
        cancel = Request("CANCEL", invite.uri)
        headers = cancel.headers
        headers.set("Via", invite.headers.getlist("Via")[0])
        headers.set("Max-Forwards", str(MAX_FORWARDS))
        for name in ("Route", "From", "To", "Call-ID"):
            for value in invite.headers.getlist(name):
                headers.add(name, value)
        cancel.headers.set("CSeq", f"{invite.cseq.sequence} CANCEL")
        headers.set("User-Agent", self.config.user_agent)
        assert s.dialog is not None
        peer = self._dialog_peer(s, s.dialog)
        key, layer_effects = self.layer.send_request(cancel, peer)
        self._client_txns[key] = (s.id, "cancel-reinvite")
        s.transactions.add(key)
        return self._run(layer_effects) + self._finish_reinvite(s, 408, None)

    def _on_refer(self, s: Session, key: TransactionKey, request: Request) -> list[Effect]:
        values = request.headers.getlist("Refer-To")
        if len(values) != 1:
            return self._respond_in_dialog(s, key, request, 400)
        try:
            target, replaces = parse_refer_to(values[0])
        except ValueError:
            return self._respond_in_dialog(s, key, request, 400)
        no_subscription = (request.headers.get("Refer-Sub") or "").strip().lower() == "false"
        response = self._dialog_response(s, request, 202)
        if no_subscription:
            response.headers.set("Refer-Sub", "false")
        effects = self._run(self.layer.respond(key, response))
        if not no_subscription:
            sequence = request.cseq.sequence
            s.usage.incoming_refer = sequence
            effects += self._notify(s, sequence, 100, "Trying", False)
        effects.append(SessionUpdate(s.id, events.Referred(target, replaces)))
        return effects

    def _on_notify(self, s: Session, key: TransactionKey, request: Request) -> list[Effect]:
        package, ident = event_id(request.headers.get("Event") or "")
        if package != "refer":
            return self._respond_in_dialog(s, key, request, 489)
        u = s.usage
        if ident is None and u.refer_order:
            ident = u.refer_order[0]
        op = u.refers.get(ident) if ident is not None else None
        if op is None or ident is None:
            return self._respond_in_dialog(s, key, request, 481)
        effects = self._respond_in_dialog(s, key, request, 200)
        status = sipfrag_status(request.body)
        terminated = subscription_terminated(request.headers.get("Subscription-State") or "")
        if terminated:
            del u.refers[ident]
            u.refer_order = [c for c in u.refer_order if c != ident]
        if ident in u.refers_final:
            if terminated:
                u.refers_final.discard(ident)
            return effects
        if terminated or (status is not None and status >= 200):
            if not terminated:
                u.refers_final.add(ident)  # a later NOTIFY ends the subscription
            effects.append(ReferProgress(s.id, op, status or 500, True))
        elif status is not None:
            effects.append(ReferProgress(s.id, op, status, False))
        return effects
