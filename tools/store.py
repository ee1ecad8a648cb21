"""Persistence: SQLite (the service) and an in-memory twin (tests of pure logic, the eval harness).

The store is dumb on purpose: it saves what the queue decided, atomically, and answers queries.
Rules it does enforce, because they must hold even if a caller is wrong:
- a GPU is held by at most one job (the ``allocations`` primary key), and
- the queue-size limit is checked and the job inserted in one ``BEGIN IMMEDIATE`` transaction.
Every saved change of a job comes with an event row in the same transaction.

One module, over 400 lines, because the SQLite store and its in-memory twin meet one contract and
are read side by side when either changes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Iterable, Protocol

from tools.models import (
    ACTIVE,
    HOLDS_GPUS,
    Event,
    Gpu,
    InventorySource,
    Job,
    JobStatus,
    Node,
    Reservation,
)


class QueueFull(RuntimeError):
    """The queue already holds its maximum number of waiting jobs."""


class GpuConflict(RuntimeError):
    """A save would have given a GPU to two jobs; nothing was written."""


class Store(Protocol):
    keeps_events: bool  # False: events are dropped, so callers need not build them

    def add_job(self, job: Job, *, max_queued: int | None) -> Job:
        """Insert a new job (its ``id`` is ignored and assigned here); enforce the queue-size limit."""
        ...
    def save_job(self, job: Job, event: Event | None) -> None: ...
    def get_job(self, job_id: int) -> Job | None: ...
    def list_jobs(
        self, *, statuses: Iterable[JobStatus] | None = None, user: str | None = None, limit: int | None = None
    ) -> list[Job]: ...
    def active_jobs(self) -> list[Job]: ...
    def count_by_status(self) -> dict[JobStatus, int]: ...
    def add_event(self, event: Event) -> None: ...
    def events(self, *, job_id: int | None = None, after_id: int = 0, limit: int = 1000) -> list[Event]: ...
    def save_inventory(self, nodes: Iterable[Node]) -> None: ...
    def load_inventory(self) -> list[Node]: ...
    def get_usage(self) -> dict[str, tuple[float, float]]: ...
    def set_usage(self, user: str, gpu_seconds: float, as_of: float) -> None: ...
    def add_reservation(self, reservation: Reservation) -> Reservation:
        """Insert it (its ``id`` is assigned here)."""
        ...
    def delete_reservation(self, reservation_id: int) -> bool: ...
    def reservations(self) -> list[Reservation]: ...
    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    submit_time REAL    NOT NULL,
    data        TEXT    NOT NULL          -- the whole Job as JSON
);
-- Matches the order the scheduler reads waiting jobs in.
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, priority DESC, submit_time, id);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user, status);

-- One row per held GPU: the primary key makes double-booking impossible.
CREATE TABLE IF NOT EXISTS allocations (
    node    TEXT    NOT NULL,
    gpu     INTEGER NOT NULL,
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (node, gpu)
);

CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    REAL    NOT NULL,
    kind    TEXT    NOT NULL,
    job_id  INTEGER,
    message TEXT    NOT NULL,
    data    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, id);

CREATE TABLE IF NOT EXISTS gpus (
    node    TEXT    NOT NULL,
    idx     INTEGER NOT NULL,
    source  TEXT    NOT NULL,
    data    TEXT    NOT NULL,             -- the Gpu as JSON, without live metrics
    PRIMARY KEY (node, idx)
);

CREATE TABLE IF NOT EXISTS usage (
    user        TEXT PRIMARY KEY,
    gpu_seconds REAL NOT NULL,
    as_of       REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS reservations (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    data    TEXT    NOT NULL              -- the Reservation as JSON
);

CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _nodes_from_gpus(rows: Iterable[tuple[str, Gpu]]) -> list[Node]:
    by_node: dict[str, tuple[str, list[Gpu]]] = {}
    for source, gpu in rows:
        by_node.setdefault(gpu.node, (source, []))[1].append(gpu)
    return [
        Node(name=name, source=InventorySource(source), gpus=tuple(sorted(gpus, key=lambda g: g.index)))
        for name, (source, gpus) in sorted(by_node.items())
    ]


def _queue_full_message(max_queued: int) -> str:
    return f"the queue is full ({max_queued} jobs waiting); try again when some have started"


class SqliteStore:
    """SQLite in WAL mode with ``synchronous=FULL``: a write that returned is on disk.

    The active jobs are also kept in memory, updated after each commit: every tick and submission
    reads all of them, and parsing them back from JSON each time cost more the longer the queue. This
    is right as long as this store is the only writer of its file, as the service is.
    """

    keeps_events = True

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the service's threads, serialised by a lock; autocommit mode so
        # that every transaction is an explicit BEGIN ... COMMIT below.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._active: dict[int, Job] = {j.id: j for j in self.list_jobs(statuses=ACTIVE)}

    # -- transactions --------------------------------------------------------------------------
    def _tx(self) -> "_Transaction":
        return _Transaction(self._db, self._lock)

    # -- jobs ----------------------------------------------------------------------------------
    def add_job(self, job: Job, *, max_queued: int | None) -> Job:
        with self._lock:  # until the cache matches the database
            with self._tx() as db:
                if max_queued is not None:
                    (queued,) = db.execute(
                        "SELECT count(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
                    ).fetchone()
                    if queued >= max_queued:
                        raise QueueFull(_queue_full_message(max_queued))
                cur = db.execute(
                    "INSERT INTO jobs (user, status, priority, submit_time, data) VALUES (?, ?, ?, ?, '')",
                    (job.user, job.status.value, job.priority, job.submit_time),
                )
                job = job.model_copy(update={"id": cur.lastrowid})
                db.execute("UPDATE jobs SET data = ? WHERE id = ?", (job.model_dump_json(), job.id))
                self._insert_event(db, _submitted(job))
            self._active[job.id] = job
        return job

    def save_job(self, job: Job, event: Event | None) -> None:
        with self._lock:  # until the cache matches the database
            try:
                with self._tx() as db:
                    db.execute(
                        "UPDATE jobs SET status = ?, priority = ?, data = ? WHERE id = ?",
                        (job.status.value, job.priority, job.model_dump_json(), job.id),
                    )
                    db.execute("DELETE FROM allocations WHERE job_id = ?", (job.id,))
                    if job.status in HOLDS_GPUS and job.allocation is not None:
                        db.executemany(
                            "INSERT INTO allocations (node, gpu, job_id) VALUES (?, ?, ?)",
                            [(node, gpu, job.id) for node, gpu in job.allocation.pairs()],
                        )
                    if event is not None:
                        self._insert_event(db, event)
            except sqlite3.IntegrityError as exc:
                raise GpuConflict(f"job {job.id}: {job.allocation} overlaps GPUs another job holds") from exc
            if job.status in ACTIVE:
                self._active[job.id] = job
            else:
                self._active.pop(job.id, None)

    def get_job(self, job_id: int) -> Job | None:
        job = self._active.get(job_id)
        if job is not None:
            return job
        with self._lock:
            row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.model_validate_json(row[0]) if row else None

    def list_jobs(
        self, *, statuses: Iterable[JobStatus] | None = None, user: str | None = None, limit: int | None = None
    ) -> list[Job]:
        where, args = [], []
        if statuses is not None:
            wanted = [s.value for s in statuses]
            where.append(f"status IN ({','.join('?' * len(wanted))})")
            args += wanted
        if user is not None:
            where.append("user = ?")
            args.append(user)
        sql = "SELECT data FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]

    def active_jobs(self) -> list[Job]:
        return list(self._active.values())  # id order: jobs are added in id order and never come back

    def count_by_status(self) -> dict[JobStatus, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        counts = {s: 0 for s in JobStatus}
        counts.update({JobStatus(s): n for s, n in rows})
        return counts

    # -- events --------------------------------------------------------------------------------
    @staticmethod
    def _insert_event(db: sqlite3.Connection, event: Event) -> None:
        db.execute(
            "INSERT INTO events (time, kind, job_id, message, data) VALUES (?, ?, ?, ?, ?)",
            (event.time, event.kind, event.job_id, event.message, json.dumps(event.data)),
        )

    def add_event(self, event: Event) -> None:
        with self._tx() as db:
            self._insert_event(db, event)

    def events(self, *, job_id: int | None = None, after_id: int = 0, limit: int = 1000) -> list[Event]:
        sql = "SELECT id, time, kind, job_id, message, data FROM events WHERE id > ?"
        args: list[object] = [after_id]
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            Event(id=i, time=t, kind=k, job_id=j, message=m, data=json.loads(d)) for i, t, k, j, m, d in rows
        ]

    # -- inventory, usage, settings -------------------------------------------------------------
    def save_inventory(self, nodes: Iterable[Node]) -> None:
        rows = [
            (gpu.node, gpu.index, node.source.value, gpu.model_copy(update={"metrics": None}).model_dump_json())
            for node in nodes
            for gpu in node.gpus
        ]
        with self._tx() as db:
            db.execute("DELETE FROM gpus")
            db.executemany("INSERT INTO gpus (node, idx, source, data) VALUES (?, ?, ?, ?)", rows)

    def load_inventory(self) -> list[Node]:
        with self._lock:
            rows = self._db.execute("SELECT source, data FROM gpus ORDER BY node, idx").fetchall()
        return _nodes_from_gpus((source, Gpu.model_validate_json(data)) for source, data in rows)

    def get_usage(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            rows = self._db.execute("SELECT user, gpu_seconds, as_of FROM usage").fetchall()
        return {user: (value, as_of) for user, value, as_of in rows}

    def set_usage(self, user: str, gpu_seconds: float, as_of: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO usage (user, gpu_seconds, as_of) VALUES (?, ?, ?) "
                "ON CONFLICT (user) DO UPDATE SET gpu_seconds = excluded.gpu_seconds, as_of = excluded.as_of",
                (user, gpu_seconds, as_of),
            )

    def add_reservation(self, reservation: Reservation) -> Reservation:
        with self._tx() as db:
            cur = db.execute("INSERT INTO reservations (data) VALUES ('')")
            reservation = reservation.model_copy(update={"id": cur.lastrowid})
            db.execute("UPDATE reservations SET data = ? WHERE id = ?", (reservation.model_dump_json(), reservation.id))
        return reservation

    def delete_reservation(self, reservation_id: int) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)).rowcount > 0

    def reservations(self) -> list[Reservation]:
        with self._lock:
            rows = self._db.execute("SELECT data FROM reservations ORDER BY id").fetchall()
        return [Reservation.model_validate_json(data) for (data,) in rows]

    def get_setting(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception, under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _submitted(job: Job) -> Event:
    return Event(
        time=job.submit_time,
        kind="submitted",
        job_id=job.id,
        message=f"{job.user} submitted {job.display_name}: {job.gpu_count} GPU(s), priority {job.priority}",
    )


class MemoryStore:
    """The in-memory twin of ``SqliteStore``: same contract, no durability, O(1) updates.

    Jobs are immutable, so handing out the stored objects is safe.
    """

    def __init__(self, *, keep_events: bool = True) -> None:
        self._jobs: dict[int, Job] = {}
        self._active: dict[int, Job] = {}
        self._holders: dict[tuple[str, int], int] = {}
        self._events: list[Event] = []
        self._keep_events = keep_events  # the eval harness replays 100k jobs and needs no audit log
        self.keeps_events = keep_events
        self._inventory: list[Node] = []
        self._usage: dict[str, tuple[float, float]] = {}
        self._settings: dict[str, str] = {}
        self._reservations: dict[int, Reservation] = {}
        self._next_reservation = 0
        self._queued = 0

    def add_job(self, job: Job, *, max_queued: int | None) -> Job:
        if max_queued is not None and self._queued >= max_queued:
            raise QueueFull(_queue_full_message(max_queued))
        job = job.model_copy(update={"id": len(self._jobs) + 1})
        self._jobs[job.id] = self._active[job.id] = job
        self._queued += 1
        if self._keep_events:
            self.add_event(_submitted(job))
        return job

    def save_job(self, job: Job, event: Event | None) -> None:
        old = self._jobs[job.id]
        held = self._held(old)
        wanted = self._held(job)
        for key in wanted - held:
            holder = self._holders.get(key)
            if holder is not None and holder != job.id:
                raise GpuConflict(f"job {job.id}: {job.allocation} overlaps GPUs job {holder} holds")
        for key in held - wanted:
            del self._holders[key]
        for key in wanted:
            self._holders[key] = job.id
        self._queued += (job.status == JobStatus.QUEUED) - (old.status == JobStatus.QUEUED)
        self._jobs[job.id] = job
        if job.status in ACTIVE:
            self._active[job.id] = job
        else:
            self._active.pop(job.id, None)
        if event is not None:
            self.add_event(event)

    @staticmethod
    def _held(job: Job) -> set[tuple[str, int]]:
        if job.status not in HOLDS_GPUS or job.allocation is None:
            return set()
        return set(job.allocation.pairs())

    def get_job(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def list_jobs(
        self, *, statuses: Iterable[JobStatus] | None = None, user: str | None = None, limit: int | None = None
    ) -> list[Job]:
        wanted = set(statuses) if statuses is not None else None
        jobs = [
            j
            for j in self._jobs.values()
            if (wanted is None or j.status in wanted) and (user is None or j.user == user)
        ]
        return jobs[:limit] if limit is not None else jobs

    def active_jobs(self) -> list[Job]:
        return list(self._active.values())

    def count_by_status(self) -> dict[JobStatus, int]:
        counts = {s: 0 for s in JobStatus}
        counts.update(Counter(j.status for j in self._jobs.values()))
        return counts

    def add_event(self, event: Event) -> None:
        if self._keep_events:
            self._events.append(event.model_copy(update={"id": len(self._events) + 1}))

    def events(self, *, job_id: int | None = None, after_id: int = 0, limit: int = 1000) -> list[Event]:
        found = [e for e in self._events[after_id:] if job_id is None or e.job_id == job_id]
        return found[:limit]

    def save_inventory(self, nodes: Iterable[Node]) -> None:
        self._inventory = [
            n.model_copy(update={"gpus": tuple(g.model_copy(update={"metrics": None}) for g in n.gpus)})
            for n in nodes
        ]

    def load_inventory(self) -> list[Node]:
        return list(self._inventory)

    def get_usage(self) -> dict[str, tuple[float, float]]:
        return dict(self._usage)

    def set_usage(self, user: str, gpu_seconds: float, as_of: float) -> None:
        self._usage[user] = (gpu_seconds, as_of)

    def add_reservation(self, reservation: Reservation) -> Reservation:
        self._next_reservation += 1
        reservation = reservation.model_copy(update={"id": self._next_reservation})
        self._reservations[reservation.id] = reservation
        return reservation

    def delete_reservation(self, reservation_id: int) -> bool:
        return self._reservations.pop(reservation_id, None) is not None

    def reservations(self) -> list[Reservation]:
        return list(self._reservations.values())

    def get_setting(self, key: str) -> str | None:
        return self._settings.get(key)

    def set_setting(self, key: str, value: str) -> None:
        self._settings[key] = value

    def close(self) -> None:
        pass
