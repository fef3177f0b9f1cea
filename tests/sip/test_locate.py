"""RFC 3263 target selection with a fake resolver, the DNS answer parser, and INVITE
failover across targets in the core (fake clock) and on loopback (sipp)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from sipmessage import URI

from sip import events
from sip.aio.dns import TYPE_NAPTR, TYPE_SRV, build_query, parse_answer
from sip.aio.useragent import UAConfig, UserAgent
from sip.locate import NaptrRecord, SrvRecord, locate, order_srv
from sip.peer import Peer
from sip.ua_effects import ResolveTargets

from .test_core import SDP, CoreHarness, respond_to
from .test_sipp import SIPP, Sipp, free_port, wait_bound
from .test_useragent import OFFER, Recorder


class FakeResolver:
    def __init__(self, naptr=None, srv=None, a=None):  # type: ignore[no-untyped-def]
        self._naptr = naptr or {}
        self._srv = srv or {}
        self._a = a or {}
        self.queries: list[str] = []

    def naptr(self, domain: str) -> list[NaptrRecord]:
        self.queries.append(f"NAPTR {domain}")
        return self._naptr.get(domain, [])

    def srv(self, name: str) -> list[SrvRecord]:
        self.queries.append(f"SRV {name}")
        return self._srv.get(name, [])

    def addresses(self, host: str) -> list[str]:
        self.queries.append(f"A {host}")
        return self._a.get(host, [])


def first(n: int) -> int:
    return 0


def test_ip_literal_needs_no_dns():
    r = FakeResolver()
    assert locate(URI.parse("sip:1@192.0.2.1"), r, first) == [Peer("UDP", "192.0.2.1", 5060)]
    assert locate(URI.parse("sips:1@192.0.2.1"), r, first) == [Peer("TLS", "192.0.2.1", 5061)]
    assert r.queries == []


def test_explicit_port_uses_a_records_only():
    r = FakeResolver(a={"pbx.example.com": ["192.0.2.1", "192.0.2.2"]})
    uri = URI.parse("sip:1@pbx.example.com:5070;transport=tcp")
    assert locate(uri, r, first) == [Peer("TCP", "192.0.2.1", 5070), Peer("TCP", "192.0.2.2", 5070)]
    assert r.queries == ["A pbx.example.com"]


def test_naptr_then_srv_then_a_in_order():
    r = FakeResolver(
        naptr={
            "example.com": [
                NaptrRecord(20, 10, "s", "SIP+D2U", "_sip._udp.example.com."),
                NaptrRecord(10, 10, "s", "SIP+D2T", "_sip._tcp.example.com."),
                NaptrRecord(5, 10, "s", "SIP+D2X", "_sip._sctp.example.com."),  # unsupported
            ]
        },
        srv={
            "_sip._tcp.example.com": [
                SrvRecord(20, 0, 5060, "backup.example.com."),
                SrvRecord(10, 0, 5080, "main.example.com."),
            ],
            "_sip._udp.example.com": [SrvRecord(10, 0, 5060, "main.example.com.")],
        },
        a={"main.example.com": ["192.0.2.10"], "backup.example.com": ["192.0.2.20"]},
    )
    assert locate(URI.parse("sip:1001@example.com"), r, first) == [
        Peer("TCP", "192.0.2.10", 5080),
        Peer("TCP", "192.0.2.20", 5060),
        Peer("UDP", "192.0.2.10", 5060),
    ]


def test_no_naptr_srv_per_transport_then_plain_a():
    r = FakeResolver(
        srv={"_sip._tcp.example.com": [SrvRecord(10, 0, 5090, "10.0.0.1")]},
        a={"example.com": ["192.0.2.99"]},
    )
    assert locate(URI.parse("sip:example.com"), r, first) == [Peer("TCP", "10.0.0.1", 5090)]
    assert locate(URI.parse("sip:example.com;transport=udp"), r, first) == [
        Peer("UDP", "192.0.2.99", 5060)
    ]
    assert locate(URI.parse("sip:nothing.example"), FakeResolver(), first) == []


def test_sips_only_uses_tls():
    r = FakeResolver(
        naptr={"example.com": [NaptrRecord(10, 10, "s", "SIP+D2U", "_sip._udp.example.com")]},
        srv={"_sips._tcp.example.com": [SrvRecord(1, 0, 5061, "tls.example.com")]},
        a={"tls.example.com": ["192.0.2.5"], "example.com": ["192.0.2.6"]},
    )
    # The only NAPTR is UDP: unusable for sips, so SRV _sips._tcp is asked.
    assert locate(URI.parse("sips:example.com"), r, first) == [Peer("TLS", "192.0.2.5", 5061)]


def test_srv_weights_rfc2782():
    records = [SrvRecord(1, 0, 1, "a"), SrvRecord(1, 60, 2, "b"), SrvRecord(1, 40, 3, "c")]
    assert [r.target for r in order_srv(records, lambda n: 0)] == ["a", "c", "b"]
    assert [r.target for r in order_srv(records, lambda n: n)] == ["b", "c", "a"]
    assert order_srv([SrvRecord(0, 0, 0, ".")], first) == []


def _answer(query: bytes, rtype: int, rdatas: list[bytes]) -> bytes:
    header = bytearray(query[:12])
    header[2:4] = b"\x81\x80"
    header[6:8] = struct.pack("!H", len(rdatas))
    out = bytes(header) + query[12:]
    for rdata in rdatas:
        out += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return out


def _name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\x00"


def test_dns_wire_parsing():
    query = build_query("_sip._udp.example.com", TYPE_SRV, 7)
    data = _answer(query, TYPE_SRV, [struct.pack("!HHH", 10, 5, 5070) + _name("pbx.example.com")])
    records, truncated = parse_answer(data, TYPE_SRV)
    assert records == [SrvRecord(10, 5, 5070, "pbx.example.com")] and not truncated
    query = build_query("example.com", TYPE_NAPTR, 8)
    rdata = struct.pack("!HH", 10, 20) + b"\x01s" + b"\x07SIP+D2T" + b"\x00"
    rdata += _name("_sip._tcp.example.com")
    records, _ = parse_answer(_answer(query, TYPE_NAPTR, [rdata]), TYPE_NAPTR)
    assert records == [NaptrRecord(10, 20, "s", "SIP+D2T", "_sip._tcp.example.com")]
    with pytest.raises((ValueError, IndexError, struct.error)):
        parse_answer(data[:20], TYPE_SRV)


# -- failover in the core --------------------------------------------------------------


def test_core_fails_over_on_503_then_timeout():
    h = CoreHarness()
    sid, effects = h.core.invite(
        "sip:1@pbx.example.com", from_user="gw", sdp=SDP, fallback_targets=("sip:1@192.0.2.9",)
    )
    assert effects == [ResolveTargets(sid, ("sip:1@pbx.example.com", "sip:1@192.0.2.9"))]
    a, b = Peer("UDP", "192.0.2.1", 5060), Peer("TCP", "192.0.2.2", 5060)
    h.apply(
        h.core.targets_resolved(
            sid,
            [("sip:1@pbx.example.com", a), ("sip:1@pbx.example.com", b), ("sip:1@192.0.2.9", a)],
        )
    )
    first_invite = h.last()
    assert h.sent[-1][1] == a
    h.receive(respond_to(first_invite, 503, "Service Unavailable"), a)
    second = h.last()
    assert h.sent[-1][1] == b and second.method == "INVITE"
    assert second.via[0].transport == "TCP" and "transport=tcp" in second.headers["Contact"]
    assert second.cseq.sequence == first_invite.cseq.sequence + 1
    assert second.call_id == first_invite.call_id
    assert second.via[0].parameters["branch"] != first_invite.via[0].parameters["branch"]
    h.advance(40)  # no answer over TCP: Timer B, next target (the fallback URI)
    third = h.last()
    assert str(third.uri) == "sip:1@192.0.2.9" and h.sent[-1][1] == a
    h.receive(respond_to(third, 180, "Ringing"), a)
    h.receive(respond_to(third, 503, "Service Unavailable"), a)  # after a 1xx: no failover
    assert h.events()[-1] == events.Rejected(503, "Service Unavailable")


def test_core_nothing_resolved_and_cancel_while_resolving():
    h = CoreHarness()
    sid, _ = h.core.invite("sip:1@pbx.example.com", from_user="gw", sdp=SDP)
    h.apply(h.core.targets_resolved(sid, []))
    assert h.events() == [events.Rejected(503, "No Target Resolved")]
    sid2, _ = h.core.invite("sip:1@pbx.example.com", from_user="gw", sdp=SDP)
    h.apply(h.core.cancel(sid2))
    h.apply(h.core.targets_resolved(sid2, [("sip:1@pbx.example.com", Peer("UDP", "1.2.3.4", 5))]))
    assert h.events()[-1] == events.Rejected(487, "Request Terminated")
    assert not any(data.startswith(b"INVITE") for _, _, data in h.sent)


# -- failover on loopback -------------------------------------------------------------

UAS_503 = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="503">
  <recv request="INVITE"/>
  <send><![CDATA[
      SIP/2.0 503 Service Unavailable
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

  ]]></send>
  <recv request="ACK"/>
</scenario>
"""


@pytest.mark.e2e
@pytest.mark.skipif(SIPP is None, reason="sipp not installed")
async def test_loopback_failover_dead_then_503_then_sipp_answers(tmp_path: Path):
    dead = free_port()  # nothing listens there: UDP INVITE times out (Timer B, fast T1)
    busy_dir, good_dir = tmp_path / "busy", tmp_path / "good"
    busy_dir.mkdir()
    good_dir.mkdir()
    (busy_dir / "uas503.xml").write_text(UAS_503)
    busy, good = Sipp(busy_dir), Sipp(good_dir)
    busy_port, good_port = free_port(), free_port()
    resolver = FakeResolver(
        naptr={"pbx.test": [NaptrRecord(1, 1, "s", "SIP+D2U", "_sip._udp.pbx.test")]},
        srv={
            "_sip._udp.pbx.test": [
                SrvRecord(1, 0, dead, "127.0.0.1"),
                SrvRecord(2, 0, busy_port, "127.0.0.1"),
            ]
        },
    )
    ua = UserAgent(UAConfig(port=0, t1=0.03), lambda i: i.reject(603), resolver=resolver)
    await busy.start("-sf", str(busy_dir / "uas503.xml"), "-p", str(busy_port))
    await good.start("-sn", "uas", "-p", str(good_port))
    await wait_bound(busy_port)
    await wait_bound(good_port)
    await ua.start()
    try:
        recorder = Recorder()
        call = ua.invite(
            "sip:service@pbx.test",
            from_user="gw",
            sdp=OFFER,
            on_event=recorder,
            fallback_targets=(f"sip:service@127.0.0.1:{good_port}",),
        )
        answered = await recorder.wait_for(events.Answered, 15)
        assert isinstance(answered, events.Answered)
        call.bye()
        assert (await good.wait())[0] == 0
        assert (await busy.wait())[0] == 0
    finally:
        await ua.close()
        await busy.stop()
        await good.stop()
    await asyncio.sleep(0)
