"""Session timers (RFC 4028), UPDATE as UAC, in-dialog digest retries and the re-INVITE
provisional timeout, in the sans-I/O core with a fake clock."""

from __future__ import annotations

import itertools

from sipmessage import Request

from sip import events
from sip.core import CoreConfig, ReinviteDone, UserAgentCore
from sip.session_timer import parse_session_expires
from sip.timers import TimerSettings

from .test_core import INVITE, SDP, respond_to, start_call
from .test_in_dialog import Harness, request

ANSWER = SDP.replace(b"4000", b"4200")
NEW_SDP = SDP.replace(b"4000", b"4100")


def harness(**config: object) -> Harness:
    h = Harness()
    counter = itertools.count(1)
    h.core = UserAgentCore(
        CoreConfig(port=5070, user_agent="test-ua", timers=TimerSettings(), **config),  # type: ignore[arg-type]
        lambda n: f"{next(counter):0{2 * n}x}",
    )
    return h


def with_headers(data: bytes, *lines: str) -> bytes:
    extra = "".join(f"{line}\r\n" for line in lines).encode()
    return data.replace(b"Content-Length", extra + b"Content-Length", 1)


def distinct(requests: list[Request]) -> list[Request]:
    """Requests without their UDP retransmissions."""
    seen: dict[int, Request] = {}
    for one in requests:
        seen.setdefault(one.cseq.sequence, one)
    return list(seen.values())


def answered_call(h: Harness, *lines: str) -> tuple[str, Request]:
    sid, invite = start_call(h)
    h.receive(with_headers(respond_to(invite, 200, "OK", body=ANSWER), *lines))
    return sid, invite


def test_parse_session_expires():
    assert parse_session_expires("1800;refresher=uac") == (1800, "uac")
    assert parse_session_expires(" 90 ") == (90, None)
    assert parse_session_expires("x") is None and parse_session_expires(None) is None


# -- UAC ----------------------------------------------------------------------------------


def test_uac_refresher_sends_update_at_half_interval_and_restarts_on_2xx():
    h = harness()
    answered_call(h, "Session-Expires: 120;refresher=uac", "Allow: INVITE, ACK, BYE, UPDATE")
    h.advance(59)
    assert h.requests("UPDATE") == []
    h.advance(1.5)
    (update,) = distinct(h.requests("UPDATE"))
    assert update.body == b"" and update.headers["Session-Expires"] == "120;refresher=uac"
    assert [at for at, _, data in h.sent if data.startswith(b"UPDATE")][0] == 60
    h.receive(
        respond_to(update, 200, "OK").replace(
            b"Content-Length", b"Session-Expires: 90;refresher=uac\r\nContent-Length"
        )
    )
    h.advance(44)
    assert len(distinct(h.requests("UPDATE"))) == 1
    h.advance(2)
    assert len(distinct(h.requests("UPDATE"))) == 2  # 45 s after the 2xx (interval 90)


def test_uac_refresher_without_update_uses_reinvite_not_reported_to_owner():
    h = harness()
    answered_call(h, "Session-Expires: 100;refresher=uac", "Allow: INVITE, ACK, BYE")
    h.advance(50.1)
    (reinvite,) = [r for r in h.requests("INVITE") if r.cseq.sequence == 2]
    assert reinvite.body == SDP and "refresher=uac" in reinvite.headers["Session-Expires"]
    h.receive(respond_to(reinvite, 200, "OK", body=ANSWER))
    assert h.done == []  # internal refresh
    assert len(h.requests("ACK")) == 2


def test_uac_not_refresher_ends_session_with_bye_when_no_refresh_comes():
    h = harness()
    sid, _ = answered_call(h, "Session-Expires: 90;refresher=uas")
    h.advance(59.9)
    assert h.requests("BYE") == []
    h.advance(0.2)  # 90 - min(32, 90/3) = 60
    assert len(distinct(h.requests("BYE"))) == 1
    assert h.events()[-1] == events.Terminated("timeout")


def test_uac_peer_refresh_reinvite_restarts_the_expiry():
    h = harness()
    sid, invite = answered_call(h, "Session-Expires: 90;refresher=uas")
    h.advance(50)
    tag = invite.from_address.parameters["tag"]
    data = request(
        "INVITE", 2, from_tag="remote1", to_tag=tag, branch="z9hG4bKrefresh",
        call_id=invite.call_id, body=ANSWER,
        extra="Supported: timer\r\nSession-Expires: 90;refresher=uac",
        from_uri="sip:1234@127.0.0.1:5080", to_uri="sip:alice@127.0.0.1:5070",
    )  # fmt: skip
    h.receive(data)
    ok = h.last()
    assert ok.code == 200 and ok.headers["Session-Expires"] == "90;refresher=uac"
    ack = request(
        "ACK", 2, from_tag="remote1", to_tag=tag, branch="z9hG4bKrefack",
        call_id=invite.call_id, from_uri="sip:1234@127.0.0.1:5080",
        to_uri="sip:alice@127.0.0.1:5070",
    )  # fmt: skip
    h.receive(ack)
    h.advance(59)
    assert h.requests("BYE") == []  # restarted at 50 s: expires at 110 s
    h.advance(1.1)
    assert len(distinct(h.requests("BYE"))) == 1


def test_uac_no_session_expires_in_2xx_means_no_timer():
    h = harness()
    answered_call(h)
    h.advance(4000)
    assert h.requests("BYE") == [] and h.requests("UPDATE") == []


def test_uac_422_retried_with_min_se():
    h = harness()
    _, invite = start_call(h)
    h.receive(with_headers(respond_to(invite, 422, "Session Interval Too Small"), "Min-SE: 3600"))
    retry = h.requests("INVITE")[-1]
    assert retry.cseq.sequence == 2
    assert retry.headers["Session-Expires"] == "3600" and retry.headers["Min-SE"] == "3600"
    assert retry.call_id == invite.call_id


# -- UAS ----------------------------------------------------------------------------------


def test_uas_grants_callers_interval_caller_refreshes_and_expiry_ends_call():
    h = harness()
    h.receive(with_headers(INVITE, "Supported: timer", "Session-Expires: 300"))
    (call,) = h.calls
    h.apply(h.core.answer(call.session_id, ANSWER))
    ok = h.last()
    assert ok.headers["Session-Expires"] == "300;refresher=uac"
    assert ok.headers["Require"] == "timer"
    tag = ok.to_address.parameters["tag"]
    h.receive(request("ACK", 10, from_tag="phone", to_tag=tag, branch="z9hG4bKack"))
    h.advance(300 - 32 + 0.1)
    assert len(distinct(h.requests("BYE"))) == 1
    assert h.events()[-1] == events.Terminated("timeout")


def test_uas_caller_without_timer_support_makes_us_refresher():
    h = harness()
    h.receive(with_headers(INVITE, "Session-Expires: 200", "Allow: INVITE, ACK, BYE, UPDATE"))
    (call,) = h.calls
    h.apply(h.core.answer(call.session_id, ANSWER))
    ok = h.last()
    assert ok.headers["Session-Expires"] == "200;refresher=uas"
    assert ok.headers.get("Require") is None
    tag = ok.to_address.parameters["tag"]
    h.receive(request("ACK", 10, from_tag="phone", to_tag=tag, branch="z9hG4bKack"))
    h.advance(100.1)
    (update,) = distinct(h.requests("UPDATE"))
    assert update.headers["Session-Expires"] == "200;refresher=uac"


def test_uas_too_small_interval_gets_422():
    h = harness()
    h.receive(with_headers(INVITE, "Supported: timer", "Session-Expires: 30"))
    assert h.calls == []
    assert h.last().code == 422 and h.last().headers["Min-SE"] == "90"


# -- UPDATE, digest retry, re-INVITE timeout ---------------------------------------------


def test_update_offer_reported_like_reinvite():
    h = harness(session_expires=0)
    sid, _ = answered_call(h)
    op, effects = h.core.update(sid, NEW_SDP)
    h.apply(effects)
    (update,) = h.requests("UPDATE")
    assert update.body == NEW_SDP and update.headers["Content-Type"] == "application/sdp"
    h.receive(respond_to(update, 200, "OK", body=ANSWER))
    assert h.done == [ReinviteDone(sid, op, 200, ANSWER)]


def test_update_rejected_and_refused_while_offer_pending():
    h = harness(session_expires=0)
    sid, _ = answered_call(h)
    op, effects = h.core.update(sid, NEW_SDP)
    h.apply(effects)
    op2, effects = h.core.update(sid, NEW_SDP)
    h.apply(effects)
    h.receive(respond_to(h.requests("UPDATE")[0], 488, "Not Acceptable Here"))
    assert ReinviteDone(sid, op, 488, None) in h.done
    assert len(h.requests("UPDATE")) == 2 and op2 == op + 1


CHALLENGE = 'WWW-Authenticate: Digest realm="pbx", nonce="n1", qop="auth"'


def authed_call(h: Harness) -> tuple[str, Request]:
    sid, effects = h.core.invite(
        "sip:1234@127.0.0.1:5080", from_user="alice", sdp=SDP, credentials=("alice", "pw")
    )
    h.apply(effects)
    invite = h.requests("INVITE")[-1]
    h.receive(respond_to(invite, 200, "OK", body=ANSWER))
    return sid, invite


def test_bye_and_info_retried_with_credentials_once():
    h = harness(session_expires=0)
    sid, _ = authed_call(h)
    h.apply(h.core.info(sid, "application/dtmf-relay", b"Signal=5\r\n"))
    info = h.requests("INFO")[-1]
    h.receive(with_headers(respond_to(info, 401, "Unauthorized"), CHALLENGE))
    retry = h.requests("INFO")[-1]
    assert retry.cseq.sequence == info.cseq.sequence + 1
    assert retry.headers["Authorization"].startswith("Digest ")
    assert 'username="alice"' in retry.headers["Authorization"]
    assert retry.body == b"Signal=5\r\n"
    h.receive(with_headers(respond_to(retry, 401, "Unauthorized"), CHALLENGE))
    assert len(h.requests("INFO")) == 2  # no loop
    h.apply(h.core.bye(sid))
    bye = h.requests("BYE")[-1]
    h.receive(
        with_headers(
            respond_to(bye, 407, "Proxy Authentication Required"),
            CHALLENGE.replace("WWW-", "Proxy-"),
        )
    )
    bye2 = h.requests("BYE")[-1]
    assert bye2.cseq.sequence == bye.cseq.sequence + 1
    assert bye2.headers["Proxy-Authorization"].startswith("Digest ")


def test_refer_retried_with_credentials_keeps_progress_reporting():
    h = harness(session_expires=0)
    sid, invite = authed_call(h)
    op, effects = h.core.refer(sid, "sip:2000@127.0.0.1")
    h.apply(effects)
    refer = h.requests("REFER")[-1]
    h.receive(with_headers(respond_to(refer, 401, "Unauthorized"), CHALLENGE))
    retry = h.requests("REFER")[-1]
    assert retry.headers["Authorization"] and retry.headers["Refer-To"]
    h.receive(respond_to(retry, 603, "Decline"))
    assert h.progress[-1].op == op and h.progress[-1].code == 603


def test_reinvite_with_only_1xx_is_cancelled_and_reported_408():
    h = harness(session_expires=0, reinvite_timeout=10.0)
    sid, _ = answered_call(h)
    op, effects = h.core.reinvite(sid, NEW_SDP)
    h.apply(effects)
    reinvite = h.requests("INVITE")[-1]
    h.receive(respond_to(reinvite, 180, "Ringing"))
    h.advance(9.9)
    assert h.requests("CANCEL") == []
    h.advance(0.2)
    (cancel,) = h.requests("CANCEL")
    assert cancel.cseq.sequence == reinvite.cseq.sequence and cancel.cseq.method == "CANCEL"
    assert cancel.via[0].parameters["branch"] == reinvite.via[0].parameters["branch"]
    assert h.done == [ReinviteDone(sid, op, 408, None)]
    h.receive(respond_to(cancel, 200, "OK"))
    h.receive(respond_to(reinvite, 487, "Request Terminated"))
    assert h.requests("BYE") == []  # the session goes on
    assert not any(isinstance(e, events.Terminated) for e in h.events())
    # The next re-INVITE is sent normally.
    op2, effects = h.core.reinvite(sid, SDP)
    h.apply(effects)
    assert h.requests("INVITE")[-1].cseq.sequence > reinvite.cseq.sequence


def test_refresh_update_refused_falls_back_to_reinvite():
    h = harness()
    answered_call(h, "Session-Expires: 100;refresher=uac", "Allow: INVITE, ACK, BYE, UPDATE")
    h.advance(50.1)
    (update,) = distinct(h.requests("UPDATE"))
    h.receive(respond_to(update, 501, "Not Implemented"))
    reinvite = h.requests("INVITE")[-1]
    assert reinvite.cseq.sequence == update.cseq.sequence + 1 and reinvite.body == SDP
    h.receive(respond_to(reinvite, 200, "OK", body=ANSWER))
    h.advance(50.1)
    assert len(distinct(h.requests("UPDATE"))) == 1  # UPDATE is not tried again
    assert len(distinct(h.requests("INVITE"))) == 3
