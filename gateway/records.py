"""Call records: one row per call (and per failed attempt) in a SQLite database.

The pieces, in the order the core uses them:

* `CallRecordBuilder` collects what happens to one call. Create it when the call starts,
  call its methods as things happen, and `ended()` when the call is over::

      b = CallRecordBuilder(direction="outgoing", call_id=client_call_id,
                            local_number="1001", local_display_name="Alice",
                            local_username="alice", remote_number="+4930123456",
                            description="my app 1.0", sink=writer.submit)
      b.sip(call_id=invite.call_id)          # as soon as the SIP leg has a Call-ID
      b.ringing()                            # 180/183 or the client was offered the call
      b.codecs(client="opus", far="PCMU")    # after negotiation
      b.sip(code=200)                        # the SIP final response (any, also 4xx-6xx)
      b.answered()                           # the call became active
      b.stats(client={...}, far={...})       # media statistics, just before the end
      b.video(codec="VP8", client={...}, far={...})   # only for calls that had video
      record = b.ended(reason="userTerminated")   # -> CallRecord, passed to `sink` once

  Every time argument is an epoch float (`time.time()`) and defaults to "now".
* `RecordWriter` takes finished records from the asyncio loop without blocking it
  (`submit()` only puts the record on a bounded queue) and writes them in a background
  thread. `close()` (or `await aclose()`) writes what is queued and stops the thread.
* `CallRecordStore` is the SQLite database itself (schema created or migrated on open,
  WAL mode); `query()` reads records back (the `webrtc-gateway calls` subcommand).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Protocol

__all__ = [
    "DIRECTIONS",
    "SCHEMA_VERSION",
    "CallRecord",
    "CallRecordBuilder",
    "CallRecordStore",
    "RecordStoreError",
    "RecordWriter",
]

logger = logging.getLogger(__name__)

#: Values of `CallRecord.direction`: the client called out (to the PBX or a SIP phone),
#: a SIP caller called a web user, one web user called another, or a SIP caller called a
#: number only registered phones have (the gateway joined the two SIP legs; the local
#: party is the called number).
DIRECTIONS: Final[tuple[str, ...]] = ("outgoing", "incoming", "web", "sip")

SCHEMA_VERSION: Final[int] = 1


class RecordStoreError(Exception):
    """The database cannot be opened or used; `str(error)` is one line naming the file."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as it is stored. Times are epoch seconds, None when not reached."""

    record_id: str  # random, unique per record
    call_id: str  # the client's call identifier (json-v1 `identifier`), "" if none
    direction: str  # one of DIRECTIONS
    # the web user's side
    local_number: str | None = None
    local_display_name: str | None = None
    local_username: str | None = None
    # the other side (the dialed number for outgoing calls, the caller for incoming)
    remote_number: str | None = None
    remote_display_name: str | None = None
    start_time: float = 0.0
    ringing_time: float | None = None
    answer_time: float | None = None
    end_time: float | None = None
    reason: str | None = None  # json-v1 reason string (§6), e.g. "userTerminated"
    sip_code: int | None = None  # SIP final response code of the far leg, if any
    description: str | None = None  # the client's `localSideDescription`
    sip_call_id: str | None = None  # Call-ID of the SIP leg, if any
    client_codec: str | None = None  # codec of the client (WebRTC) leg, e.g. "opus"
    far_codec: str | None = None  # codec of the far leg, e.g. "PCMU"
    #: media statistics: {"client": {...}, "far": {...}} (any JSON values); calls that had
    #: video add {"video": {"codec": "VP8", "client": {...}, "far": {...}}} (a leg's dict only
    #: when that leg had video). Inside the JSON column, so the table and its schema
    #: version stay as they were and older readers see one more key they ignore.
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds from answer to end; 0 for calls that were never answered."""
        if self.answer_time is None or self.end_time is None:
            return 0.0
        return max(0.0, self.end_time - self.answer_time)

    @property
    def video_codec(self) -> str | None:
        """The video codec of a call that had video ("VP8", "H264"), else None."""
        video = self.stats.get("video")
        codec = video.get("codec") if isinstance(video, dict) else None
        return codec if isinstance(codec, str) else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict of every field plus `duration` and `video_codec`."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["duration"] = round(self.duration, 3)
        data["video_codec"] = self.video_codec
        return data


_COLUMNS: Final[tuple[str, ...]] = tuple(f.name for f in fields(CallRecord))

_MIGRATIONS: Final[tuple[str, ...]] = (
    # version 1
    """
    CREATE TABLE calls (
        record_id TEXT PRIMARY KEY,
        call_id TEXT NOT NULL,
        direction TEXT NOT NULL,
        local_number TEXT,
        local_display_name TEXT,
        local_username TEXT,
        remote_number TEXT,
        remote_display_name TEXT,
        start_time REAL NOT NULL,
        ringing_time REAL,
        answer_time REAL,
        end_time REAL,
        reason TEXT,
        sip_code INTEGER,
        description TEXT,
        sip_call_id TEXT,
        client_codec TEXT,
        far_codec TEXT,
        stats TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX calls_start_time ON calls (start_time);
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class CallRecordStore:
    """The call records database (SQLite). Thread-safe: one connection behind a lock.

    Opening creates the file (unless `create=False`) and creates or migrates the schema;
    the version lives in the `schema_version` table. Raises `RecordStoreError` for a path
    that cannot be opened, a file that is not a SQLite database, or a schema newer than
    this program knows; `FileNotFoundError` when `create=False` and the file is missing.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = os.fspath(path)
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(self.path)
        if os.path.isdir(self.path):
            raise RecordStoreError(f"call records database {self.path}: is a directory")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as e:
            raise RecordStoreError(f"call records database {self.path}: {e}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as e:
            self._db.close()
            raise RecordStoreError(f"call records database {self.path}: {e}") from None

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this program's ({SCHEMA_VERSION})"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with db:  # one transaction per migration step
                for statement in _MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        db.commit()

    @property
    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def write(self, record: CallRecord) -> None:
        """Insert (or replace, by record_id) one record. Blocking: use `RecordWriter`
        from the asyncio loop."""
        self.write_many([record])

    def write_many(self, records: Iterable[CallRecord]) -> None:
        """Insert several records in one transaction."""
        rows = [_to_row(r) for r in records]
        if not rows:
            return
        marks = ", ".join("?" for _ in _COLUMNS)
        sql = f"INSERT OR REPLACE INTO calls ({', '.join(_COLUMNS)}) VALUES ({marks})"
        with self._lock, self._db:
            self._db.executemany(sql, rows)

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        direction: str | None = None,
    ) -> list[CallRecord]:
        """Records with `since <= start_time < until`, oldest first.

        With `limit`, the newest `limit` of them (still oldest first, like `tail`).
        `direction` filters on one of DIRECTIONS.
        """
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("start_time >= ?")
            params.append(since)
        if until is not None:
            where.append("start_time < ?")
            params.append(until)
        if direction is not None:
            where.append("direction = ?")
            params.append(direction)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_time DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))
        try:
            with self._lock:
                rows = self._db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise RecordStoreError(f"call records database {self.path}: {e}") from None
        return [_from_row(row) for row in reversed(rows)]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CallRecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_row(record: CallRecord) -> tuple[Any, ...]:
    values = []
    for name in _COLUMNS:
        value = getattr(record, name)
        if name == "stats":
            value = json.dumps(value, default=str, separators=(",", ":"))
        values.append(value)
    return tuple(values)


def _from_row(row: tuple[Any, ...]) -> CallRecord:
    data = dict(zip(_COLUMNS, row, strict=True))
    try:
        stats = json.loads(data["stats"] or "{}")
    except ValueError:
        stats = {}
    data["stats"] = stats if isinstance(stats, dict) else {}
    return CallRecord(**data)


# --------------------------------------------------------------------------- writer


class _Sink(Protocol):
    def write_many(self, records: Iterable[CallRecord]) -> None: ...

    def close(self) -> None: ...


_STOP: Final = object()


class RecordWriter:
    """Writes records in a background thread so the asyncio loop never waits on disk.

    `submit(record)` never blocks: it puts the record on a queue of `max_queue` records;
    when the queue is full the record is dropped, `dropped` counts it and a warning is
    logged (the first drop and then every 100th). The thread writes whatever is queued in
    one transaction per batch; a failed write is logged and counted in `failed`.
    `flush()` waits until everything submitted so far is written; `close()` flushes,
    stops the thread and closes the store. Both block: from a coroutine use
    `await writer.aclose()`.
    """

    def __init__(self, store: _Sink, *, max_queue: int = 10000, batch: int = 100) -> None:
        self.store = store
        self.max_queue = max_queue
        self.batch = batch
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="call-records", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> RecordWriter:
        """A writer over a new `CallRecordStore(path)` (raises `RecordStoreError`)."""
        return cls(CallRecordStore(path), **kwargs)

    def submit(self, record: CallRecord) -> bool:
        """Queue a record for writing; False when it was dropped (queue full or closed)."""
        if self._closed:
            self._drop(record, "writer closed")
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._drop(record, f"queue full ({self.max_queue} records waiting)")
            return False
        return True

    def _drop(self, record: CallRecord, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            logger.warning(
                "call record %s dropped: %s (%d dropped so far)", record.record_id, why,
                self.dropped,
            )

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            items = [item]
            while len(items) < self.batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [i for i in items if i is not _STOP]
            stop = len(records) != len(items)
            if records:
                try:
                    self.store.write_many(records)
                    self.written += len(records)
                except Exception as e:  # keep the thread alive whatever the database does
                    self.failed += len(records)
                    logger.error("writing %d call record(s) failed: %s", len(records), e)
            for _ in items:
                self._queue.task_done()

    def flush(self) -> None:
        """Block until every record submitted so far has been written (or failed)."""
        self._queue.join()

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, stop the thread and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)  # blocks only while the queue is full: the thread drains it
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a hung disk
            logger.error("call records writer did not finish within %s s", timeout)
            return
        self.store.close()

    async def aclose(self) -> None:
        """`close()` without blocking the event loop."""
        await asyncio.to_thread(self.close)


# --------------------------------------------------------------------------- builder


class CallRecordBuilder:
    """Collects one call's record while the call runs; `ended()` returns the record.

    Create it when the call starts (a client `start`, an INVITE offered to clients, or a
    failed attempt about to be refused). All times are epoch floats; each defaults to
    `clock()` (time.time). `ringing()` and `answered()` keep the first time given.
    `sip()`, `codecs()` and `stats()` may be called any number of times: a keyword left
    out (None) keeps what was set before.

    `ended()` completes the record; the first call also passes it to `sink` (e.g.
    `RecordWriter.submit`). Later calls return the same record and do not submit again,
    so every path that ends a call may call `ended()` safely.
    """

    def __init__(
        self,
        *,
        direction: str,
        call_id: str = "",
        local_number: str | None = None,
        local_display_name: str | None = None,
        local_username: str | None = None,
        remote_number: str | None = None,
        remote_display_name: str | None = None,
        description: str | None = None,
        start: float | None = None,
        sink: Callable[[CallRecord], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self._clock = clock
        self._sink = sink
        self._result: CallRecord | None = None
        self._stats: dict[str, Any] = {}
        self._record = CallRecord(
            record_id=uuid.uuid4().hex,
            call_id=call_id,
            direction=direction,
            local_number=local_number,
            local_display_name=local_display_name,
            local_username=local_username,
            remote_number=remote_number,
            remote_display_name=remote_display_name,
            start_time=clock() if start is None else start,
            description=description,
        )

    @property
    def done(self) -> bool:
        """True once `ended()` has been called."""
        return self._result is not None

    @property
    def record_id(self) -> str:
        return self._record.record_id

    def _set(self, **changes: Any) -> None:
        if self._result is None:  # after ended() the record is final
            self._record = replace(self._record, **changes)

    def local(
        self,
        *,
        number: str | None = None,
        display_name: str | None = None,
        username: str | None = None,
        call_id: str | None = None,
    ) -> None:
        """Set the web user's party (or the client call identifier) if not known at start."""
        changes = {
            k: v
            for k, v in (
                ("local_number", number),
                ("local_display_name", display_name),
                ("local_username", username),
                ("call_id", call_id),
            )
            if v is not None
        }
        self._set(**changes)

    def routed(self, direction: str) -> None:
        """Correct the direction once routing knows it (a dialed number was a web user)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self._set(direction=direction)

    def remote(self, *, number: str | None = None, display_name: str | None = None) -> None:
        """Set the far party (e.g. from the P-Asserted-Identity of the answer)."""
        changes = {
            k: v
            for k, v in (("remote_number", number), ("remote_display_name", display_name))
            if v is not None
        }
        self._set(**changes)

    def ringing(self, t: float | None = None) -> None:
        """The call started ringing (first call wins)."""
        if self._record.ringing_time is None:
            self._set(ringing_time=self._clock() if t is None else t)

    def answered(self, t: float | None = None) -> None:
        """The call was answered / became active (first call wins)."""
        if self._record.answer_time is None:
            self._set(answer_time=self._clock() if t is None else t)

    def sip(self, *, call_id: str | None = None, code: int | None = None) -> None:
        """The SIP leg's Call-ID and/or its final response code (the last code wins)."""
        changes: dict[str, Any] = {}
        if call_id is not None:
            changes["sip_call_id"] = call_id
        if code is not None:
            changes["sip_code"] = int(code)
        self._set(**changes)

    def codecs(self, *, client: str | None = None, far: str | None = None) -> None:
        """Negotiated codec names of the client leg and the far leg."""
        changes = {
            k: v for k, v in (("client_codec", client), ("far_codec", far)) if v is not None
        }
        self._set(**changes)

    def stats(
        self, *, client: dict[str, Any] | None = None, far: dict[str, Any] | None = None
    ) -> None:
        """Media statistics of the client leg and the far leg (JSON-serializable dicts,
        e.g. packets, lost, jitter, rtt); replaces what an earlier call set for that leg."""
        if self._result is not None:
            return
        if client is not None:
            self._stats["client"] = dict(client)
        if far is not None:
            self._stats["far"] = dict(far)

    @property
    def video_codec(self) -> str | None:
        """The video codec set so far by `video()`, if any."""
        video = self._stats.get("video")
        return video.get("codec") if video is not None else None

    def video(
        self,
        *,
        codec: str | None = None,
        client: dict[str, Any] | None = None,
        far: dict[str, Any] | None = None,
    ) -> None:
        """The call had video: its codec and the video statistics of the client leg and
        the far leg, stored as `stats["video"]`. A keyword left out keeps what was set
        before; a leg's statistics replace what an earlier call set for that leg."""
        if self._result is not None or (codec is None and client is None and far is None):
            return
        video = self._stats.setdefault("video", {})
        if codec is not None:
            video["codec"] = codec
        if client is not None:
            video["client"] = dict(client)
        if far is not None:
            video["far"] = dict(far)

    def ended(self, t: float | None = None, reason: str | None = None) -> CallRecord:
        """Finish the record with the end time and the json-v1 reason; returns it.

        The first call passes the record to `sink`; later calls return it unchanged.
        """
        if self._result is not None:
            return self._result
        end = self._clock() if t is None else t
        self._result = replace(self._record, end_time=end, reason=reason, stats=self._stats)
        if self._sink is not None:
            try:
                self._sink(self._result)
            except Exception:  # a broken sink must not break call teardown
                logger.exception("call record sink failed")
        return self._result
