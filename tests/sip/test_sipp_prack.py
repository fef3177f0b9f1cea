"""PRACK (RFC 3262) and session-timer refresh (RFC 4028) against sipp on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sip.aio.useragent import UAConfig, UserAgent
from sip.events import Answered, Provisional

from .test_sipp import (
    SIPP,
    Sipp,
    free_port,
    sipp,  # noqa: F401 - the fixture: a Sipp runner in tmp_path, stopped at teardown
    wait_bound,
)
from .test_useragent import OFFER, Recorder

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(SIPP is None, reason="sipp not installed")]

SDP_BODY = """v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

# A UAS answering with a reliable 183 + SDP, checking our PRACK's RAck, then 200 with
# Session-Expires: 2;refresher=uac and Allow: UPDATE, so we must refresh with UPDATE
# after 1 s; the second refresh is 30 s away, the BYE comes first. The 2xx to the
# INVITE reuses the INVITE's Via saved in $via (the last message was the PRACK).
UAS_PRACK = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="prack and session timer">
  <recv request="INVITE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" assign_to="via"/>
      <ereg regexp="100rel" search_in="hdr" header="Supported:" check_it="true" assign_to="s1"/>
      <ereg regexp="timer" search_in="hdr" header="Supported:" check_it="true" assign_to="s2"/>
      <ereg regexp="^ *1800" search_in="hdr" header="Session-Expires:" check_it="true"
            assign_to="s3"/>
    </action>
  </recv>
  <send><![CDATA[
      SIP/2.0 183 Session Progress
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Require: 100rel
      RSeq: 4711
      Content-Type: application/sdp
      Content-Length: [len]

{SDP_BODY}
  ]]></send>
  <recv request="PRACK">
    <action>
      <ereg regexp="^ *4711 1 INVITE" search_in="hdr" header="RAck:" check_it="true"
            assign_to="r1"/>
    </action>
  </recv>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

  ]]></send>
  <send><![CDATA[
      SIP/2.0 200 OK
      Via: [$via]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Allow: INVITE, ACK, BYE, CANCEL, PRACK, UPDATE
      Supported: timer
      Require: timer
      Session-Expires: 2;refresher=uac
      Content-Type: application/sdp
      Content-Length: [len]

{SDP_BODY}
  ]]></send>
  <recv request="ACK"/>
  <recv request="UPDATE">
    <action>
      <ereg regexp="refresher=uac" search_in="hdr" header="Session-Expires:" check_it="true"
            assign_to="u1"/>
    </action>
  </recv>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Require: timer
      Session-Expires: 60;refresher=uac
      Content-Length: 0

  ]]></send>
  <recv request="BYE"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

  ]]></send>
  <Reference variables="s1,s2,s3,r1,u1"/>
</scenario>
"""


async def test_reliable_183_pracked_and_session_refreshed_with_update(
    sipp: Sipp,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
):
    (tmp_path / "prack.xml").write_text(UAS_PRACK)
    port = free_port()
    await sipp.start("-sf", str(tmp_path / "prack.xml"), "-p", str(port))
    ua = UserAgent(UAConfig(port=0), lambda invite: invite.reject(603))
    try:
        await wait_bound(port)
        await ua.start()
        recorder = Recorder()
        call = ua.invite(
            f"sip:service@127.0.0.1:{port}", from_user="gw", sdp=OFFER, on_event=recorder
        )
        answered = await recorder.wait_for(Answered)
        assert answered.sdp and answered.sdp.startswith(b"v=0")
        provisional = [e for e in recorder.events if isinstance(e, Provisional)]
        assert [p.code for p in provisional] == [183] and provisional[0].sdp
        assert call.peer_allows("UPDATE")
        await asyncio.sleep(1.6)  # the refresh UPDATE leaves at 1 s
        call.bye()
        code, output = await sipp.wait()
        assert code == 0, output
    finally:
        await ua.close()  # the sipp fixture stops sipp
