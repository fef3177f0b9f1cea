"""In-dialog operations of the sans-I/O core with a fake clock: re-INVITE/UPDATE offers
both ways, 491 glare retries, late offer, INFO/MESSAGE/OPTIONS, REFER/NOTIFY."""

from __future__ import annotations

from typing import Any

from sipmessage import Request, Response

from sip import events
from sip.core import OfferReceived, OfferWanted, ReferProgress, ReinviteDone
from sip.refer import parse_refer_to, refer_to_value, replaces_value, sipfrag_status

from .test_core import INVITE, PHONE, SDP, CoreHarness, respond_to, start_call

NEW_SDP = SDP.replace(b"4000", b"4100") + b"a=sendonly\r\n"
ANSWER = SDP.replace(b"4000", b"4200")


class Harness(CoreHarness):
    """CoreHarness that also records the in-dialog effects."""

    def __init__(self) -> None:
        super().__init__()
        self.done: list[ReinviteDone] = []
        self.progress: list[ReferProgress] = []
        self.offers: list[OfferReceived | OfferWanted] = []

    def apply(self, effects: list[Any]) -> None:
        super().apply(effects)
        for effect in effects:
            if isinstance(effect, ReinviteDone):
                self.done.append(effect)
            elif isinstance(effect, ReferProgress):
                self.progress.append(effect)
            elif isinstance(effect, OfferReceived | OfferWanted):
                self.offers.append(effect)

    def requests(self, method: str) -> list[Request]:
        return [m for m in self.messages() if isinstance(m, Request) and m.method == method]

    def responses(self) -> list[Response]:
        return [m for m in self.messages() if isinstance(m, Response)]


def request(
    method: str,
    cseq: int,
    *,
    from_tag: str,
    to_tag: str,
    branch: str,
    call_id: str = "incoming-1",
    body: bytes = b"",
    content_type: str = "application/sdp",
    extra: str = "",
    from_uri: str = "sip:bob@127.0.0.1:5080",
    to_uri: str = "sip:5555@127.0.0.1:5070",
) -> bytes:
    lines = [
        f"{method} sip:5555@127.0.0.1:5070 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch};rport",
        "Max-Forwards: 70",
        f"From: <{from_uri}>;tag={from_tag}",
        f"To: <{to_uri}>;tag={to_tag}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:bob@127.0.0.1:5080>",
    ]
    if extra:
        lines.append(extra)
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- UAS-side session: an answered incoming call ------------------------------------------


class Inbound:
    """An incoming call answered and ACKed; `send` injects requests from the phone."""

    def __init__(self) -> None:
        self.h = Harness()
        self.h.receive(INVITE)
        (call,) = self.h.calls
        self.sid = call.session_id
        self.h.apply(self.h.core.answer(self.sid, SDP))
        self.tag = self.h.last().to_address.parameters["tag"]
        self.cseq = 10
        self.send("ACK", cseq=10)

    def send(self, method: str, *, cseq: int | None = None, **kwargs: Any) -> None:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = kwargs.pop("branch", f"z9hG4bK{method.lower()}{cseq}")
        data = request(method, cseq, from_tag="phone", to_tag=self.tag, branch=branch, **kwargs)
        self.h.receive(data)


def test_reinvite_offer_answered_by_owner_and_2xx_retransmitted_until_ack():
    t = Inbound()
    h = t.h
    h.core.delegate_offers(t.sid)
    t.send("INVITE", body=NEW_SDP)
    assert h.offers == [OfferReceived(t.sid, NEW_SDP)]
    h.apply(h.core.answer_offer(t.sid, ANSWER))
    ok = h.last()
    assert ok.code == 200 and ok.body == ANSWER and ok.headers["Contact"]
    assert "UPDATE" in ok.headers["Allow"] and "REFER" in ok.headers["Allow"]
    h.advance(0.5 + 1.0 + 0.1)
    assert [m.code for m in h.responses()][-3:] == [200, 200, 200]
    t.send("ACK", cseq=11)
    sent = len(h.sent)
    h.advance(60)
    assert len(h.sent) == sent  # no more retransmissions, no BYE
    # Our answer became the current SDP: without an owner to make the offer, a
    # late-offer re-INVITE gets it as the offer.
    h.core.delegate_offers(t.sid, False)
    t.send("INVITE")
    assert h.last().code == 200 and h.last().body == ANSWER
    assert h.events() == [events.Confirmed()]


def test_reinvite_offer_refused_by_owner_gets_488():
    t = Inbound()
    h = t.h
    h.core.delegate_offers(t.sid)
    t.send("INVITE", body=NEW_SDP)
    h.apply(h.core.answer_offer(t.sid, None))
    assert h.last().code == 488
    h.core.delegate_offers(t.sid, False)
    t.send("INVITE")  # the session goes on
    assert h.last().code == 200 and h.last().body == SDP


def test_reinvite_without_owner_answer_keeps_current_sdp():
    t = Inbound()
    t.send("INVITE", body=NEW_SDP)
    assert t.h.last().code == 200 and t.h.last().body == SDP
    assert t.h.offers == []


def test_late_offer_reinvite_takes_the_answer_from_the_ack():
    t = Inbound()
    h = t.h
    t.send("INVITE")
    ok = h.last()
    assert ok.code == 200 and ok.body == SDP  # our current SDP as the offer
    t.send("ACK", cseq=11, body=ANSWER)
    assert h.events()[-1] == events.RemoteAnswer(ANSWER)


def test_late_offer_reinvite_gets_the_owners_offer_not_our_last_answer():
    """The peer held us (our answer a=recvonly) and resumes with a re-INVITE without SDP:
    the 2xx carries the owner's offer, not that answer (RFC 3264 §8)."""
    t = Inbound()
    h = t.h
    h.core.delegate_offers(t.sid)
    held = ANSWER + b"a=recvonly\r\n"
    t.send("INVITE", body=NEW_SDP)
    h.apply(h.core.answer_offer(t.sid, held))
    t.send("ACK", cseq=t.cseq)
    answered = len(h.responses())
    t.send("INVITE")
    assert h.offers == [OfferReceived(t.sid, NEW_SDP), OfferWanted(t.sid)]
    assert all(r.code < 200 for r in h.responses()[answered:])  # waits for the offer
    t.send("UPDATE", body=NEW_SDP)  # another offer while ours is being made: 500
    assert h.last().code == 500 and h.last().cseq.method == "UPDATE"
    offer = SDP.replace(b"4000", b"4300") + b"a=sendrecv\r\n"
    h.apply(h.core.answer_offer(t.sid, offer))
    ok = h.last()
    assert ok.code == 200 and ok.cseq.method == "INVITE" and ok.body == offer
    t.send("ACK", cseq=t.cseq - 1, body=ANSWER)
    assert h.events()[-1] == events.RemoteAnswer(ANSWER)
    # Our offer is the current SDP now (what a refresh re-INVITE would carry).
    h.core.delegate_offers(t.sid, False)
    t.send("INVITE")
    assert h.last().code == 200 and h.last().body == offer


def test_late_offer_reinvite_refused_by_owner_gets_488():
    t = Inbound()
    h = t.h
    h.core.delegate_offers(t.sid)
    t.send("INVITE")
    assert h.offers == [OfferWanted(t.sid)]
    h.apply(h.core.answer_offer(t.sid, None))
    assert h.last().code == 488
    t.send("INVITE", body=NEW_SDP)  # the session goes on
    assert h.offers[-1] == OfferReceived(t.sid, NEW_SDP)


def test_late_offer_initial_invite_answer_in_ack_is_confirmed_with_sdp():
    h = Harness()
    no_offer = INVITE.split(b"Content-Type")[0] + b"Content-Length: 0\r\n\r\n"
    h.receive(no_offer)
    (call,) = h.calls
    assert call.sdp is None
    h.apply(h.core.answer(call.session_id, SDP))
    tag = h.last().to_address.parameters["tag"]
    h.receive(request("ACK", 10, from_tag="phone", to_tag=tag, branch="z9hG4bKa", body=ANSWER))
    assert h.events() == [events.Confirmed(ANSWER)]


def test_reinvite_without_ack_ends_the_session_with_bye():
    t = Inbound()
    h = t.h
    t.send("INVITE", body=NEW_SDP)
    h.advance(40)
    assert h.events()[-1] == events.Terminated("timeout")
    assert h.requests("BYE")


def test_update_with_and_without_offer():
    t = Inbound()
    h = t.h
    t.send("UPDATE")
    assert h.last().code == 200 and h.last().body == b"" and h.last().headers["Contact"]
    h.core.delegate_offers(t.sid)
    t.send("UPDATE", body=NEW_SDP)
    assert h.offers == [OfferReceived(t.sid, NEW_SDP)]
    h.apply(h.core.answer_offer(t.sid, ANSWER))
    assert h.last().code == 200 and h.last().body == ANSWER
    assert h.last().cseq.method == "UPDATE"


def test_info_message_options_answered_200_and_delivered():
    t = Inbound()
    h = t.h
    t.send("INFO", body=b"Signal=5\r\nDuration=160\r\n", content_type="application/dtmf-relay")
    assert h.last().code == 200
    t.send("MESSAGE", body=b"hello", content_type="text/plain")
    assert h.last().code == 200
    t.send("OPTIONS")
    assert h.last().code == 200 and "INFO" in h.last().headers["Allow"]
    assert h.events()[1:] == [
        events.InfoReceived("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n"),
        events.MessageReceived("text/plain", b"hello"),
    ]


def test_incoming_refer_202_notify_progress_and_referred_event():
    t = Inbound()
    h = t.h
    replaces = "abc@host;to-tag=t1;from-tag=f1"
    refer_to = refer_to_value("sip:2000@127.0.0.1:5090", replaces)
    t.send("REFER", extra=f"Refer-To: {refer_to}")
    assert h.responses()[-1].code == 202
    notify = h.requests("NOTIFY")[-1]
    assert notify.headers["Event"] == "refer;id=11"
    assert notify.headers["Subscription-State"].startswith("active")
    assert notify.headers["Content-Type"].startswith("message/sipfrag")
    assert sipfrag_status(notify.body) == 100
    assert str(notify.uri) == "sip:bob@127.0.0.1:5080"  # the remote target
    assert h.events()[-1] == events.Referred("sip:2000@127.0.0.1:5090", replaces)
    h.apply(h.core.notify_refer(t.sid, 180, "Ringing"))
    h.apply(h.core.notify_refer(t.sid, 200, "OK"))
    notifies = h.requests("NOTIFY")
    assert [sipfrag_status(n.body) for n in notifies] == [100, 180, 200]
    assert notifies[-1].headers["Subscription-State"].startswith("terminated")
    assert [n.cseq.sequence for n in notifies] == [1, 2, 3]
    h.apply(h.core.notify_refer(t.sid, 200, "OK"))  # subscription over: nothing sent
    assert len(h.requests("NOTIFY")) == 3


def test_refer_without_refer_to_is_400():
    t = Inbound()
    t.send("REFER")
    assert t.h.last().code == 400


def test_reinvite_from_uas_waits_for_the_ack():
    h = Harness()
    h.receive(INVITE)
    (call,) = h.calls
    h.apply(h.core.answer(call.session_id, SDP))
    tag = h.last().to_address.parameters["tag"]
    h.apply(h.core.reinvite(call.session_id, NEW_SDP)[1])
    assert h.requests("INVITE") == []
    h.receive(request("ACK", 10, from_tag="phone", to_tag=tag, branch="z9hG4bKa"))
    (reinvite,) = h.requests("INVITE")
    assert reinvite.body == NEW_SDP and reinvite.cseq.sequence == 1
    assert reinvite.to_address.parameters["tag"] == "phone"


def test_incoming_invite_with_replaces_is_accepted():
    h = Harness()
    data = INVITE.replace(
        b"Max-Forwards: 70",
        b"Max-Forwards: 70\r\nRequire: replaces\r\nReplaces: x;to-tag=a;from-tag=b",
    )
    h.receive(data)
    (call,) = h.calls
    assert call.replaces == "x;to-tag=a;from-tag=b"


# -- UAC-side session: an answered outgoing call -------------------------------------------


class Outbound:
    def __init__(self) -> None:
        self.h = Harness()
        self.sid, self.invite = start_call(self.h)
        self.h.receive(respond_to(self.invite, 200, "OK", body=SDP))
        self.tag = self.invite.from_address.parameters["tag"]
        self.remote_cseq = 100

    def reply(self, req: Request, code: int, body: bytes = b"", extra: str = "") -> None:
        data = respond_to(req, code, "X", body=body)
        if extra:
            data = data.replace(b"Content-Length", extra.encode() + b"\r\nContent-Length", 1)
        self.h.receive(data)

    def send(self, method: str, **kwargs: Any) -> None:
        self.remote_cseq += 1
        data = request(
            method,
            self.remote_cseq,
            from_tag="remote1",
            to_tag=self.tag,
            branch=f"z9hG4bKr{self.remote_cseq}",
            call_id=self.invite.call_id,
            from_uri="sip:1234@127.0.0.1:5080",
            to_uri="sip:alice@127.0.0.1:5070",
            **kwargs,
        )
        self.h.receive(data)


def test_reinvite_answered_acked_and_reacked():
    t = Outbound()
    h = t.h
    op, effects = h.core.reinvite(t.sid, NEW_SDP)
    h.apply(effects)
    reinvite = h.requests("INVITE")[-1]
    assert reinvite.cseq.sequence == 2 and reinvite.body == NEW_SDP
    assert reinvite.to_address.parameters["tag"] == "remote1"
    t.reply(reinvite, 200, ANSWER)
    ack = h.last()
    assert ack.method == "ACK" and ack.cseq.sequence == 2
    assert h.done == [ReinviteDone(t.sid, op, 200, ANSWER)]
    t.reply(reinvite, 200, ANSWER)  # lost ACK
    assert h.sent[-1][2] == h.sent[-2][2]
    h.advance(40)
    t.reply(reinvite, 200, ANSWER)  # after Timer M: the dialog still re-ACKs
    assert h.last().method == "ACK" and h.last().cseq.sequence == 2
    assert len(h.done) == 1


def test_reinvite_491_retried_after_glare_timer():
    t = Outbound()
    h = t.h
    op, effects = h.core.reinvite(t.sid, NEW_SDP)
    h.apply(effects)
    first = h.requests("INVITE")[-1]
    t.reply(first, 491)
    (glare_at,) = [at for key, at in h.timers.items() if key[-1] == "glare"]
    assert 2.1 <= glare_at - h.now <= 4.0  # we own the Call-ID (RFC 3261 §14.1)
    h.advance(4.0)
    retry = h.requests("INVITE")[-1]
    assert retry.cseq.sequence == 3 and retry.body == NEW_SDP
    t.reply(retry, 200, ANSWER)
    assert h.done == [ReinviteDone(t.sid, op, 200, ANSWER)]


def test_glare_incoming_reinvite_gets_491_while_ours_is_pending():
    t = Outbound()
    h = t.h
    h.apply(h.core.reinvite(t.sid, NEW_SDP)[1])
    t.send("INVITE", body=NEW_SDP)
    assert h.last().code == 491
    t.send("UPDATE", body=NEW_SDP)
    assert h.last().code == 491


def test_reinvites_are_queued_one_transaction_at_a_time():
    t = Outbound()
    h = t.h
    op1, effects = h.core.reinvite(t.sid, NEW_SDP)
    h.apply(effects)
    op2, effects = h.core.reinvite(t.sid, SDP)
    h.apply(effects)
    assert len(h.requests("INVITE")) == 2  # the initial one and the first re-INVITE
    t.reply(h.requests("INVITE")[-1], 488)
    second = h.requests("INVITE")[-1]
    assert second.body == SDP and second.cseq.sequence == 3
    t.reply(second, 200, ANSWER)
    assert h.done == [ReinviteDone(t.sid, op1, 488, None), ReinviteDone(t.sid, op2, 200, ANSWER)]
    assert h.events() == [events.Answered(SDP)]  # a 488 leaves the session up


def test_reinvite_timeout_ends_the_session():
    t = Outbound()
    h = t.h
    op, effects = h.core.reinvite(t.sid, NEW_SDP)
    h.apply(effects)
    h.advance(40)
    assert h.done == [ReinviteDone(t.sid, op, 408, None)]
    assert h.events()[-1] == events.Terminated("timeout")
    assert h.requests("BYE")


def test_reinvite_481_ends_the_session_as_gone():
    t = Outbound()
    h = t.h
    op, effects = h.core.reinvite(t.sid, NEW_SDP)
    h.apply(effects)
    t.reply(h.requests("INVITE")[-1], 481)
    assert h.done == [ReinviteDone(t.sid, op, 481, None)]
    assert h.events()[-1] == events.Terminated("gone")


def test_reinvite_before_dialog_is_481():
    h = Harness()
    sid, _ = start_call(h)
    op, effects = h.core.reinvite(sid, NEW_SDP)
    assert effects == [ReinviteDone(sid, op, 481, None)]


def test_refer_with_replaces_and_notify_progress():
    t = Outbound()
    h = t.h
    replaces = replaces_value("other@host", "tt", "ff")
    op, effects = h.core.refer(t.sid, "sip:2000@127.0.0.1:5090", replaces)
    h.apply(effects)
    refer = h.requests("REFER")[-1]
    assert refer.headers["Refer-To"] == (
        "<sip:2000@127.0.0.1:5090?Replaces=other%40host%3Bto-tag%3Dtt%3Bfrom-tag%3Dff>"
    )
    assert parse_refer_to(refer.headers["Refer-To"]) == ("sip:2000@127.0.0.1:5090", replaces)
    assert refer.headers["Contact"] and refer.headers["Referred-By"]
    t.reply(refer, 202)
    assert h.progress == []
    event = f"Event: refer;id={refer.cseq.sequence}\r\nSubscription-State: active;expires=60"
    body = b"SIP/2.0 100 Trying\r\n"
    t.send("NOTIFY", body=body, content_type="message/sipfrag", extra=event)
    assert h.last().code == 200
    body = b"SIP/2.0 180 Ringing\r\n"
    t.send("NOTIFY", body=body, content_type="message/sipfrag", extra=event)
    final = event.replace("active;expires=60", "terminated;reason=noresource")
    t.send("NOTIFY", body=b"SIP/2.0 200 OK\r\n", content_type="message/sipfrag", extra=final)
    assert h.last().code == 200
    assert [(p.code, p.final) for p in h.progress] == [(100, False), (180, False), (200, True)]
    assert {p.op for p in h.progress} == {op}
    t.send("NOTIFY", body=b"SIP/2.0 200 OK\r\n", content_type="message/sipfrag", extra=final)
    assert h.last().code == 481  # that subscription is over


def test_notify_without_id_and_final_before_terminated():
    t = Outbound()
    h = t.h
    op, effects = h.core.refer(t.sid, "sip:2000@127.0.0.1:5090")
    h.apply(effects)
    t.reply(h.requests("REFER")[-1], 202)
    active = "Event: refer\r\nSubscription-State: active"
    t.send("NOTIFY", body=b"SIP/2.0 503 Service Unavailable\r\n", extra=active)
    t.send(
        "NOTIFY",
        body=b"SIP/2.0 503 Service Unavailable\r\n",
        extra="Event: refer\r\nSubscription-State: terminated",
    )
    assert h.last().code == 200
    assert [(p.code, p.final) for p in h.progress] == [(503, True)]


def test_refer_refused_is_reported():
    t = Outbound()
    h = t.h
    op, effects = h.core.refer(t.sid, "sip:2000@127.0.0.1:5090")
    h.apply(effects)
    t.reply(h.requests("REFER")[-1], 405)
    assert h.progress == [ReferProgress(t.sid, op, 405, True)]
    assert not h.events()[-1] == events.Terminated("gone")


def test_refer_timeout_is_408():
    t = Outbound()
    h = t.h
    op, effects = h.core.refer(t.sid, "sip:2000@127.0.0.1:5090")
    h.apply(effects)
    h.advance(40)
    assert h.progress == [ReferProgress(t.sid, op, 408, True)]


def test_info_sent_in_dialog():
    t = Outbound()
    h = t.h
    h.apply(h.core.info(t.sid, "application/dtmf-relay", b"Signal=1\r\nDuration=100\r\n"))
    info = h.requests("INFO")[-1]
    assert info.headers["Content-Type"] == "application/dtmf-relay"
    assert info.body == b"Signal=1\r\nDuration=100\r\n"
    assert str(info.uri) == "sip:bob@127.0.0.1:5080" and h.sent[-1][1] == PHONE
    assert h.core.session_tags(t.sid) == (t.tag, "remote1")


def test_notify_for_unknown_event_package_is_489():
    t = Outbound()
    t.send("NOTIFY", extra="Event: dialog")
    assert t.h.last().code == 489


def test_refer_to_parsing():
    assert parse_refer_to("sip:a@b") == ("sip:a@b", None)
    assert parse_refer_to('"X" <sip:a@b;transport=tcp>;p=1') == ("sip:a@b;transport=tcp", None)


def test_deferred_message_answered_by_the_owner_and_bounded():
    t = Inbound()
    h = t.h
    h.core.defer_messages(t.sid, True)
    sent = len(h.sent)
    t.send("MESSAGE", body=b"hello", content_type="text/plain")
    assert len(h.sent) == sent  # no 200 yet: the owner relays the other side's answer
    (event,) = [e for e in h.events() if isinstance(e, events.MessageReceived)]
    assert event.content_type == "text/plain" and event.body == b"hello" and event.op > 0
    h.apply(h.core.respond_message(t.sid, event.op, 202))
    assert h.last().code == 202 and h.last().cseq.method == "MESSAGE"
    h.apply(h.core.respond_message(t.sid, event.op, 200))  # once only
    assert h.last().code == 202
    # Never answered: 504 after 64*T1 (RFC 4320: no 408 for a non-INVITE).
    t.send("MESSAGE", body=b"again", content_type="text/plain")
    h.advance(32.1)
    assert h.last().code == 504
    # Too big a body: 413 at once, nothing delivered.
    t.send("MESSAGE", body=b"x" * 20000, content_type="text/plain")
    assert h.last().code == 413
    assert len([e for e in h.events() if isinstance(e, events.MessageReceived)]) == 2
    # A pending MESSAGE when the dialog ends: 481.
    t.send("MESSAGE", body=b"late", content_type="text/plain")
    t.send("BYE")
    codes = [(r.cseq.method, r.code) for r in h.responses()[-2:]]
    assert sorted(codes) == [("BYE", 200), ("MESSAGE", 481)]
