"""Tests for gateway.records (store, writer thread, builder) and `webrtc-gateway calls`."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import cli
from gateway.records import (
    SCHEMA_VERSION,
    CallRecord,
    CallRecordBuilder,
    CallRecordStore,
    RecordStoreError,
    RecordWriter,
)

ROOT = Path(__file__).resolve().parents[2]


def make(n: int, start: float, direction: str = "outgoing", **kw: object) -> CallRecord:
    values: dict[str, object] = dict(
        record_id=f"r{n}",
        call_id=f"c{n}",
        direction=direction,
        local_number="1001",
        local_display_name="Alice",
        local_username="alice",
        remote_number="+4930123456",
        start_time=start,
        ringing_time=start + 1,
        answer_time=start + 3,
        end_time=start + 65,
        reason="userTerminated",
        sip_code=200,
        description="my app 1.0",
        sip_call_id=f"sip-{n}@gw",
        client_codec="opus",
        far_codec="PCMU",
        stats={"client": {"packets": 3000, "lost": 2, "jitter": 0.004},
               "far": {"packets": 3001, "rtt": 0.012}},
    )
    values.update(kw)
    return CallRecord(**values)  # type: ignore[arg-type]


def test_round_trip_every_field(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    record = make(1, 1_700_000_000.25)
    failed = make(2, 1_700_000_100.0, "incoming", answer_time=None, ringing_time=None,
                  reason="busy", sip_code=486, stats={}, remote_display_name="Bob")
    with CallRecordStore(db) as store:
        store.write(record)
        store.write(failed)
        assert store.schema_version == SCHEMA_VERSION
    with CallRecordStore(db, create=False) as store:
        assert store.query() == [record, failed]
    assert record.duration == 62.0 and failed.duration == 0.0
    data = record.to_json()
    assert data["duration"] == 62.0 and data["stats"]["far"]["rtt"] == 0.012
    json.dumps(data)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_query_since_until_limit_direction(tmp_path: Path) -> None:
    with CallRecordStore(tmp_path / "c.db") as store:
        store.write_many(make(i, 1000.0 + 10 * i, "web" if i % 2 else "outgoing")
                         for i in range(10))
        assert [r.record_id for r in store.query(since=1050)] == [f"r{i}" for i in range(5, 10)]
        assert [r.record_id for r in store.query(since=1020, until=1040)] == ["r2", "r3"]
        # limit: the newest N, oldest first
        assert [r.record_id for r in store.query(limit=3)] == ["r7", "r8", "r9"]
        assert [r.record_id for r in store.query(direction="web")] == ["r1", "r3", "r5", "r7",
                                                                        "r9"]
        assert store.query(since=5000) == []


def test_schema_is_versioned_and_newer_schema_refused(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    CallRecordStore(db).close()
    CallRecordStore(db).close()  # reopening migrates nothing and keeps one version row
    con = sqlite3.connect(db)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    with pytest.raises(RecordStoreError, match=r"c\.db: schema version 99 is newer"):
        CallRecordStore(db)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CallRecordStore(tmp_path / "missing.db", create=False)
    with pytest.raises(RecordStoreError, match="is a directory"):
        CallRecordStore(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RecordStoreError, match="junk.db"):
        CallRecordStore(junk)


# --------------------------------------------------------------------------- writer


def test_writer_flushes_on_close(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = RecordWriter.open(db)
    for i in range(500):
        assert writer.submit(make(i, 1000.0 + i))
    writer.close()
    assert writer.written == 500 and writer.dropped == 0
    with CallRecordStore(db) as store:
        assert len(store.query()) == 500
    assert not writer.submit(make(999, 1.0))  # closed: refused and counted
    assert writer.dropped == 1


async def test_writer_aclose_and_submit_from_loop(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    writer = RecordWriter.open(db)
    builder = CallRecordBuilder(direction="outgoing", call_id="x", sink=writer.submit)
    builder.ended(reason="userTerminated")
    await writer.aclose()
    with CallRecordStore(db) as store:
        assert [r.call_id for r in store.query()] == ["x"]


class BlockedStore:
    """A store whose writes wait until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.writing = threading.Event()
        self.records: list[CallRecord] = []
        self.closed = False

    def write_many(self, records: Iterable[CallRecord]) -> None:
        self.writing.set()
        self.release.wait(10)
        self.records.extend(records)

    def close(self) -> None:
        self.closed = True


def test_writer_overflow_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    store = BlockedStore()
    writer = RecordWriter(store, max_queue=5, batch=1)
    assert writer.submit(make(0, 0.0))
    assert store.writing.wait(5)  # the thread holds record 0; the queue is empty
    with caplog.at_level(logging.WARNING, logger="gateway.records"):
        started = time.monotonic()
        results = [writer.submit(make(i, float(i))) for i in range(1, 11)]
        assert time.monotonic() - started < 0.5  # submit never waits
    assert results == [True] * 5 + [False] * 5
    assert writer.dropped == 5
    assert "dropped" in caplog.text and "queue full" in caplog.text
    store.release.set()
    writer.close()
    assert [r.record_id for r in store.records] == [f"r{i}" for i in range(6)]
    assert writer.written == 6 and store.closed


def test_writer_survives_failing_store(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(BlockedStore):
        def write_many(self, records: Iterable[CallRecord]) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    writer = RecordWriter(Failing())
    writer.submit(make(1, 1.0))
    writer.flush()
    assert writer.failed == 1
    writer.submit(make(2, 2.0))
    writer.close()
    assert writer.failed == 2 and "disk I/O error" in caplog.text


# --------------------------------------------------------------------------- builder


def test_builder_collects_a_call() -> None:
    now = [100.0]
    sunk: list[CallRecord] = []
    b = CallRecordBuilder(
        direction="incoming",
        call_id="abc",
        local_number="1001",
        local_display_name="Alice",
        local_username="alice",
        remote_number="+4930999",
        remote_display_name="Caller",
        description="my app 1.0",
        sink=sunk.append,
        clock=lambda: now[0],
    )
    b.sip(call_id="xyz@pbx")
    b.ringing(101.0)
    b.ringing(102.0)  # first wins
    b.codecs(client="opus")
    b.codecs(far="PCMA")
    b.sip(code=200)
    now[0] = 104.5
    b.answered()
    b.stats(client={"packets": 10}, far={"packets": 11})
    assert not b.done
    record = b.ended(160.0, "userTerminated")
    assert b.done
    assert record == CallRecord(
        record_id=b.record_id, call_id="abc", direction="incoming", local_number="1001",
        local_display_name="Alice", local_username="alice", remote_number="+4930999",
        remote_display_name="Caller", start_time=100.0, ringing_time=101.0,
        answer_time=104.5, end_time=160.0, reason="userTerminated", sip_code=200,
        description="my app 1.0", sip_call_id="xyz@pbx", client_codec="opus",
        far_codec="PCMA", stats={"client": {"packets": 10}, "far": {"packets": 11}},
    )
    # ended() again: same record, not submitted twice; later changes are ignored
    b.sip(code=500)
    assert b.ended(200.0, "error") is record
    assert sunk == [record]


def test_builder_video_statistics_are_additive(tmp_path: Path) -> None:
    """A call that had video: its codec and both legs' video counters under stats["video"],
    beside the audio statistics; the table and schema version are unchanged, and records
    without video read as before (video_codec None)."""
    b = CallRecordBuilder(direction="outgoing", remote_number="1002", start=10.0)
    b.video()  # nothing given: no video section
    b.stats(client={"packets_received": 500}, far={"packets_received": 501})
    assert b.video_codec is None
    far = {"codec": "VP8", "packets_sent": 900, "packets_received": 800, "bytes_sent": 9e5,
           "keyframe_requests_sent": 2, "keyframe_requests_received": 1, "frames_sent": 300,
           "frames_received": 290, "packets_lost": 0, "rtt_ms": 1.5}
    b.video(codec="VP8", far=far)
    b.video(client={"codec": "VP8", "packets_sent": 800, "packets_received": 900})
    b.video(codec=None, far={**far, "packets_sent": 901})  # the latest far counters win
    assert b.video_codec == "VP8"
    record = b.ended(20.0, "userTerminated")
    assert record.stats["client"] == {"packets_received": 500}
    video = record.stats["video"]
    assert video["codec"] == "VP8" == record.video_codec
    assert video["far"]["packets_sent"] == 901 and video["client"]["packets_received"] == 900
    b.video(codec="H264")  # after ended(): ignored
    assert record.video_codec == "VP8"

    with CallRecordStore(tmp_path / "c.db") as store:
        store.write(record)
        store.write(make(2, 30.0))
        assert store.schema_version == SCHEMA_VERSION == 1
        with_video, audio_only = store.query()
    assert with_video == record and with_video.stats["video"]["far"]["rtt_ms"] == 1.5
    data = with_video.to_json()
    assert data["video_codec"] == "VP8" and data["stats"]["video"]["client"]["packets_sent"] == 800
    json.dumps(data)
    assert audio_only.video_codec is None and audio_only.to_json()["video_codec"] is None
    # an odd stats column (written by someone else) does not break the property
    assert make(3, 1.0, stats={"video": "VP8"}).video_codec is None


def test_builder_failed_attempt_and_bad_direction() -> None:
    b = CallRecordBuilder(direction="outgoing", remote_number="555", start=10.0)
    b.sip(code=486)
    r = b.ended(12.0, "busy")
    assert (r.ringing_time, r.answer_time, r.sip_code, r.reason, r.duration) == (
        None, None, 486, "busy", 0.0)
    with pytest.raises(ValueError):
        CallRecordBuilder(direction="sideways")


# --------------------------------------------------------------------------- CLI


def test_parse_since() -> None:
    now = 1_000_000.0
    assert cli.parse_since("1h", now) == now - 3600
    assert cli.parse_since("30m", now) == now - 1800
    assert cli.parse_since("2d", now) == now - 2 * 86400
    assert cli.parse_since("45s", now) == now - 45
    assert cli.parse_since("2024-05-01") == datetime(2024, 5, 1).timestamp()
    assert cli.parse_since("2024-05-01T10:30") == datetime(2024, 5, 1, 10, 30).timestamp()
    assert cli.parse_since("2024-05-01T10:30:00+00:00") == 1714559400.0
    with pytest.raises(ValueError, match="expected an age"):
        cli.parse_since("yesterday")


def calls(tmp_path: Path, *args: str, db: str = "calls.db") -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gw.toml"
    config.write_text(f'[records]\npath = "{db}"\n')
    return subprocess.run(
        [sys.executable, "-m", "gateway", "calls", "--config", str(config), *args],
        cwd=tmp_path,  # the database path is relative to the working directory
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TZ": "UTC"},
    )


def test_cli_table_and_json(tmp_path: Path) -> None:
    now = time.time()
    with CallRecordStore(tmp_path / "calls.db") as store:
        store.write(make(1, now - 7200))  # two hours ago
        store.write(make(2, now - 600, "incoming", remote_display_name="Bob",
                         answer_time=None, reason="busy", sip_code=486))
        store.write(make(3, now - 60, "web", remote_number="1002", sip_code=None,
                         answer_time=now - 50, end_time=now + 3700))
    out = calls(tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["time", "direction", "from", "to", "duration", "reason", "sip"]
    assert len(lines) == 4
    first = lines[1]
    assert "outgoing" in first and "Alice <1001>" in first and "+4930123456" in first
    assert "1:02" in first and "userTerminated" in first and first.endswith("200")
    assert datetime.fromtimestamp(now - 7200, UTC).strftime("%Y-%m-%d %H:%M") in first
    second = lines[2]  # incoming: from the caller to the web user, never answered
    assert second.index("Bob <+4930123456>") < second.index("Alice <1001>")
    assert " - " in second and "busy" in second and second.endswith("486")
    assert "1:02:30" in lines[3] and lines[3].endswith("-")

    out = calls(tmp_path, "--since", "1h")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3

    out = calls(tmp_path, "--json", "--limit", "2")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["call_id"] for r in rows] == ["c2", "c3"]
    assert rows[0]["sip_code"] == 486 and rows[0]["stats"]["client"]["lost"] == 2
    assert rows[1]["duration"] == 3750.0

    out = calls(tmp_path, "--since", "2030-01-01")
    assert (out.returncode, out.stdout) == (0, "no calls recorded in that period\n")


def test_cli_missing_and_unreadable_database(tmp_path: Path) -> None:
    out = calls(tmp_path)
    assert out.returncode == 0
    assert out.stdout == "no calls recorded (no database at calls.db)\n"
    assert not (tmp_path / "calls.db").exists()  # listing does not create it

    (tmp_path / "adir").mkdir()
    out = calls(tmp_path, db="adir")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "webrtc-gateway: call records database adir: is a directory\n"

    (tmp_path / "junk.db").write_text("not sqlite\n" * 200)
    out = calls(tmp_path, db="junk.db")
    assert out.returncode == 2
    assert out.stderr.startswith("webrtc-gateway: call records database junk.db: ")
    assert len(out.stderr.splitlines()) == 1

    out = calls(tmp_path, "--since", "soon")
    assert out.returncode == 2 and "--since" in out.stderr


def test_cli_table_phone_to_phone(tmp_path: Path) -> None:
    """direction "sip" (a SIP caller joined to a registered phone): from the caller to the
    called number, as for incoming calls."""
    now = time.time()
    with CallRecordStore(tmp_path / "calls.db") as store:
        store.write(make(1, now - 60, "sip", local_number="1002", local_display_name=None,
                         local_username=None, remote_number="1001", reason="success"))
    out = calls(tmp_path)
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[1]
    assert "sip" in row and row.index("1001") < row.index("1002"), row
    out = calls(tmp_path, "--json")
    assert json.loads(out.stdout)["direction"] == "sip"
