"""Persistence: SQLite (the service) and an in-memory twin (tests of pure logic, the eval harness).

The store is dumb on purpose: it saves what the queue decided, atomically, and answers queries.
Rules it does enforce, because they must hold even if a caller is wrong:
- a GPU is held by at most one job (the ``allocations`` primary key), and
- the queue-size limit is checked and the job inserted in one ``BEGIN IMMEDIATE`` transaction.
Every saved change of a job comes with an event row in the same transaction.

Faults of the database itself (locked past the busy timeout, a disk I/O error, a read-only file) come
out as ``StorageError``, one line saying what failed; the transaction was rolled back and the in-memory
cache left as it was, so the next call may succeed without a restart. ``fault`` says whether the last
operation failed. Reads have connections of their own: in WAL mode they never wait for a write.

One module, over 400 lines, because the SQLite store and its in-memory twin meet one contract and
are read side by side when either changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from tools.models import (
    ACTIVE,
    HOLDS_GPUS,
    MAX_ID,
    STORED,
    Event,
    Gpu,
    InventorySource,
    Job,
    JobStatus,
    JobUsage,
    Node,
    Reservation,
    changed,
)
from tools.store_tx import Commit, Transaction


log = logging.getLogger(__name__)

# Members read on every save, bound once: reading one through its enum class costs as much as the
# rest of a status test.
_QUEUED = JobStatus.QUEUED

# Told of a submission's jobs once they are stored (the queue's index and batches, kept in step).
Stored = Callable[[list[Job]], None]
# Ended jobs read at once by ``ended_since``: a report's memory does not grow with the history.
ENDED_PAGE = 1000
# Submissions written in one transaction at most: bounds a batch's time under the store's lock.
MAX_BATCH = 512


class QueueFull(RuntimeError):
    """The queue already holds its maximum number of waiting jobs."""


class GpuConflict(RuntimeError):
    """A save would have given a GPU to two jobs; nothing was written."""


class StorageError(RuntimeError):
    """The database could not be read or written (locked too long, an I/O error, a read-only file);
    a write was rolled back, so nothing changed."""


class AlreadySubmitted(Exception):
    """A submission's idempotency key was used before: for job ``job_id``, by a request with
    ``fingerprint``. Nothing was written."""

    def __init__(self, job_id: int, fingerprint: str) -> None:
        super().__init__(f"this idempotency key was used for job {job_id}")
        self.job_id, self.fingerprint = job_id, fingerprint


@dataclass(frozen=True)
class StoreFault:
    """Why the last read or write failed; cleared by the next one that works."""

    operation: str  # "read" or "write"
    message: str


def in_id_range(value: int) -> bool:
    """Whether ``value`` can be an id at all (SQLite's INTEGER, ids from 1)."""
    return 0 < value <= MAX_ID


class Store(Protocol):
    keeps_events: bool  # False: events are dropped, so callers need not build them
    fault: StoreFault | None  # why the last read or write failed; None once one works again

    def probe(self) -> StoreFault | None:
        """After a fault, try a small write: the fault that remains."""
        ...

    def add_job(self, job: Job, *, max_queued: int | None, max_queued_per_user: int | None = None,
                stored: Stored | None = None) -> Job:
        """Insert a new job (its ``id`` is ignored and assigned here); enforce the queue-size limits."""
        ...
    def add_jobs(self, jobs: Sequence[Job], *, max_queued: int | None,
                 max_queued_per_user: int | None = None, stored: Stored | None = None) -> list[Job]:
        """Insert the tasks of one array, all or none, in one transaction: ids are assigned in order and
        each task's ``array_id`` is the first one's. The array counts once against ``max_queued`` (waiting
        submissions) and each task against ``max_queued_per_user`` (its user's waiting jobs). Returns once
        they are on disk; ``stored`` is called with them first, before any later write of this store, so
        that whoever keeps a view of the jobs has them before anyone else can change them."""
        ...
    def save_job(self, job: Job, event: Event | None) -> None: ...
    def one_commit(self) -> AbstractContextManager[Commit | Unchanged]:
        """The writes of this thread inside the block, committed together when it ends; if it fails,
        none of them is kept, in the database or in memory (``before``: the jobs put back)."""
        ...
    def get_job(self, job_id: int) -> Job | None: ...
    def list_jobs(
        self, *, statuses: Iterable[JobStatus] | None = None, user: str | None = None, limit: int | None = None
    ) -> list[Job]: ...
    def page_jobs(
        self, *, statuses: Iterable[JobStatus] | None = None, user: str | None = None, before: int | None = None,
        limit: int, name: str | None = None, array_id: int | None = None, end_reason: str | None = None,
    ) -> list[Job]:
        """At most ``limit`` jobs with ids below ``before`` (all if None), newest first; the cost does not
        grow with the history. ``name``, ``array_id``, ``end_reason``: only such jobs."""
        ...
    def ended_since(self, since: float) -> Iterator[Job]:
        """Every job that ended at or after ``since`` (accounting), oldest id first, read a page at a time:
        a report over a long history never holds it all."""
        ...
    def find_submission(self, scope: str, key: str) -> tuple[str, int] | None:
        """(fingerprint, job id) of the submission made with this idempotency key, if any."""
        ...
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
    def update_reservation(self, reservation: Reservation) -> None:
        """Save a reservation's new GPUs (or other fields) under its id."""
        ...
    def reservations(self) -> list[Reservation]: ...
    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def save_job_usage(self, usage: Mapping[int, JobUsage]) -> None:
        """Replace the GPU usage of these jobs (the sampler's, every sample of a running job)."""
        ...
    def job_usage(self, job_ids: Iterable[int]) -> dict[int, JobUsage]:
        """The GPU usage stored for those of these jobs that have one."""
        ...
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
-- Pages of the history, newest first (GET /jobs): by id within a status, within a user.
CREATE INDEX IF NOT EXISTS jobs_by_status_id ON jobs (status, id);
CREATE INDEX IF NOT EXISTS jobs_by_user_id ON jobs (user, id);

-- Idempotency-Key of a submission: written with the job, in its transaction.
CREATE TABLE IF NOT EXISTS idempotency (
    scope       TEXT    NOT NULL,         -- the acting user
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,         -- digest of the request
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (scope, key)
);

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

CREATE TABLE IF NOT EXISTS job_usage (
    job_id  INTEGER PRIMARY KEY,
    data    TEXT    NOT NULL              -- the JobUsage as JSON
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


class _Waiting:
    """What the queue-size limits count, kept up to date as jobs are saved: waiting submissions (a job,
    or an array with any task waiting, counts once) and each user's waiting jobs (every task counted)."""

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self.singles = 0
        self.arrays: Counter[int] = Counter()
        self.by_user: Counter[str] = Counter()
        for job in jobs:
            self.change(None, job)

    def copy(self) -> _Waiting:
        twin = _Waiting()
        twin.singles, twin.arrays, twin.by_user = self.singles, Counter(self.arrays), Counter(self.by_user)
        return twin

    @property
    def submissions(self) -> int:
        return self.singles + len(self.arrays)

    def change(self, old: Job | None, new: Job | None) -> None:
        is_queued = new is not None and new.status == _QUEUED
        if old is None or old.status != _QUEUED:
            if is_queued:  # (a submission, or a requeue)
                self._count(new, 1)  # type: ignore[arg-type]
            return  # (most saves: a start, an end) nothing counted moves
        if is_queued and old.user == new.user and old.array_id == new.array_id:  # type: ignore[union-attr]
            return  # (a waiting job's new reason) the same
        self._count(old, -1)
        if is_queued:
            self._count(new, 1)  # type: ignore[arg-type]

    def _count(self, job: Job, sign: int) -> None:
        self.by_user[job.user] += sign
        if job.array_id is None:
            self.singles += sign
        else:
            self.arrays[job.array_id] += sign
            if not self.arrays[job.array_id]:
                del self.arrays[job.array_id]

    def check(self, jobs: Sequence[Job], max_queued: int | None, max_queued_per_user: int | None) -> None:
        """Refuse (``QueueFull``) one submission of ``jobs`` (a job, or an array's tasks) of one user."""
        if max_queued is not None and self.submissions >= max_queued:
            raise QueueFull(_queue_full_message(max_queued))
        if max_queued_per_user is None:
            return
        user = jobs[0].user
        if len(jobs) > max_queued_per_user:
            raise QueueFull(f"an array of {len(jobs)} tasks is more than one user may have waiting "
                            f"({max_queued_per_user} jobs, each task counted); submit a smaller array")
        waiting = self.by_user[user]
        if waiting + len(jobs) > max_queued_per_user:
            raise QueueFull(f"user {user} has {waiting} jobs waiting (each task of an array counted) and may have "
                            f"{max_queued_per_user}; this submission adds {len(jobs)}; try again when some have started")


def _with_array(job: Job, first_id: int, index: int) -> Job:
    """A task with the ids the store assigned: its own, and the array's (its first task's)."""
    return changed(job, {"id": first_id + index, "idempotency": None,
                         **({"array_id": first_id} if job.array_index is not None else {})})


class SqliteStore:
    """SQLite in WAL mode with ``synchronous=FULL``: a write that returned is on disk.

    Writes go through one connection, serialised by a lock, each in a ``BEGIN IMMEDIATE`` transaction
    that waits at most ``busy_timeout_s`` for another process's lock. Reads take a connection of their
    own from a small pool: WAL readers see the last commit and never wait for a writer, so a write stuck
    on the file's lock holds up no read.

    The active jobs are also kept in memory, updated after each commit: every tick and submission
    reads all of them, and parsing them back from JSON each time cost more the longer the queue. So
    are the jobs per status (``count_by_status``, read by every view of the queue). This is right as
    long as this store is the only writer of its file, as the service is.

    Submissions are committed in groups: ``add_jobs`` hands its jobs to one writer thread, which takes
    every submission waiting, writes them in one transaction (one fsync for all) and then wakes their
    callers. A submission refused on its own (the queue full, an idempotency key used before) is left
    out of the transaction and told why; a transaction that fails fails every submission of it, and
    none of them is stored or kept in memory.

    A scheduler pass writes its changes in a few commits (``one_commit``, ``tools.store_tx``) rather
    than one per change; a failed one is rolled back in memory too.
    """

    keeps_events = True

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 5.0) -> None:
        memory = str(path) == ":memory:"
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._path = str(path)
        self._busy_ms = max(0, int(busy_timeout_s * 1000))
        self.fault: StoreFault | None = None
        # The writer: shared by the service's threads, serialised by a lock; autocommit mode so that
        # every transaction is an explicit BEGIN ... COMMIT below.
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        # The commit a thread has open (one_commit), and the memory changes made inside it, to undo.
        self._open_commit: Commit | None = None
        self._commit_thread: int | None = None
        self._undo: list[tuple[int, Job | None, Job]] = []
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        self._db.executescript(_SCHEMA)
        # Readers (none for an in-memory database, which only its one connection sees).
        self._readers: queue.SimpleQueue[sqlite3.Connection] | None = None if memory else queue.SimpleQueue()
        self._opened: list[sqlite3.Connection] = []
        self._active: dict[int, Job] = {j.id: j for j in self.list_jobs(statuses=ACTIVE)}
        self._waiting = _Waiting(self._active.values())
        self._counts: Counter[JobStatus] = Counter(
            {JobStatus(status): n for status, n in self._read("SELECT status, count(*) FROM jobs GROUP BY status")})
        # Submissions waiting for the writer thread (started by the first one), and whether it must stop.
        self._submissions: list[_Submission] = []
        self._submitted = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closing = False
        # Accounting reads jobs by when they ended (an index on the JSON field: no column to migrate).
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_end ON jobs (json_extract(data, '$.end_time'))")

    # -- connections, transactions and faults --------------------------------------------------
    def _tx(self) -> Transaction:
        return Transaction(self._db, self._lock, self)

    @contextlib.contextmanager
    def one_commit(self) -> Iterator[Commit]:
        """Every write this thread makes inside the block goes into one transaction, committed (one
        fsync) when the block ends; other threads' writes wait until then, and this thread's reads see
        what it wrote. If anything inside raises, or the commit fails, all of it is rolled back and the
        memory put back as it was (``Commit.before`` says which jobs were); the exception goes on, a
        fault of the database as ``StorageError``. Nested, a savepoint: its failure undoes only itself.
        Memory is updated as each write is made, so a reader of another thread may see a change up to
        the end of the block before it is on disk (a pass's few milliseconds)."""
        with self._lock:
            parent = self._open_commit
            scope = Commit(self, parent)
            scope.begin()
            self._open_commit, self._commit_thread = scope, threading.get_ident()
            try:
                yield scope
            except BaseException as exc:
                self._open_commit = parent
                scope.fail()
                if isinstance(exc, (sqlite3.Error, OSError)) and not isinstance(exc, sqlite3.IntegrityError):
                    raise self._failed("write", exc) from exc
                raise
            self._open_commit = parent
            scope.end()

    def _cache(self, old: Job | None, new: Job) -> None:
        """Keep the memory in step with a saved job (``old``: the active version it replaces, if any)."""
        if old is not None:  # an ended job's status never changes again
            self._counts = self._counts + Counter({new.status: 1}) - Counter({old.status: 1})
        self._waiting.change(old, new)
        if new.status in ACTIVE:
            self._active[new.id] = new
        else:
            self._active.pop(new.id, None)
        if self._open_commit is not None:
            self._undo.append((new.id, old, new))
            self._open_commit.saved(new.id, old)

    def _restore(self, mark: int) -> None:
        """Undo the memory changes logged from ``mark`` on (a commit that failed), newest first."""
        back = self._undo[mark:]
        del self._undo[mark:]
        came_back = False
        for job_id, old, new in reversed(back):
            self._waiting.change(new, old)
            if old is not None:
                self._counts = self._counts + Counter({old.status: 1}) - Counter({new.status: 1})
                came_back |= job_id not in self._active
                self._active[job_id] = old
            else:
                self._active.pop(job_id, None)
        if came_back:  # an ended job made active again: keep the id order active_jobs() promises
            self._active = dict(sorted(self._active.items()))

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """Rows of one query, on a reader of its own (the writer's connection for ``:memory:``)."""
        if self._readers is None or self._in_commit():
            with self._lock:
                return self._fetch(self._db, sql, args)
        try:
            db = self._readers.get_nowait()
        except queue.Empty:
            db = self._new_reader()
        try:
            return self._fetch(db, sql, args)
        finally:
            self._readers.put(db)

    def _in_commit(self) -> bool:
        """Whether this thread has a commit open: its reads must see what it wrote, not yet committed."""
        return self._open_commit is not None and self._commit_thread == threading.get_ident()

    def _fetch(self, db: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[tuple]:
        try:
            rows = db.execute(sql, args).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise self._failed("read", exc) from exc
        if self.fault is not None and self.fault.operation == "read":
            self.fault = None
        return rows

    def _new_reader(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            db.execute("PRAGMA query_only=ON")
        except (sqlite3.Error, OSError) as exc:
            raise self._failed("read", exc) from exc
        with self._lock:
            self._opened.append(db)
        return db

    def _failed(self, operation: str, exc: BaseException) -> StorageError:
        """Remember the fault; the one-line error to raise for it."""
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.fault = StoreFault(operation, why)
        doing = "reading" if operation == "read" else "writing"
        done = "" if operation == "read" else "; nothing was changed"
        return StorageError(f"the database failed while {doing} ({why}){done}; try again")

    @property
    def busy_timeout_s(self) -> float:
        """How long a write waits for another connection's lock before it fails."""
        return self._busy_ms / 1000

    @busy_timeout_s.setter
    def busy_timeout_s(self, seconds: float) -> None:
        with self._lock:
            self._busy_ms = max(0, int(seconds * 1000))
            self._db.execute(f"PRAGMA busy_timeout={self._busy_ms}")

    def probe(self) -> StoreFault | None:
        """After a fault, try one small write (waiting briefly for the lock): the fault that remains."""
        if self.fault is None:
            return None
        with self._lock:
            try:
                self._db.execute("PRAGMA busy_timeout=200")
                with self._tx() as db:
                    db.execute("INSERT INTO settings (key, value) VALUES ('health_probe', '1') "
                               "ON CONFLICT (key) DO UPDATE SET value = value + 1")
            except StorageError:
                pass
            finally:
                try:
                    self._db.execute(f"PRAGMA busy_timeout={self._busy_ms}")
                except sqlite3.Error:
                    pass
        return self.fault

    # -- jobs ----------------------------------------------------------------------------------
    def add_job(self, job: Job, *, max_queued: int | None, max_queued_per_user: int | None = None,
                stored: Stored | None = None) -> Job:
        return self.add_jobs([job], max_queued=max_queued, max_queued_per_user=max_queued_per_user, stored=stored)[0]

    def add_jobs(self, jobs: Sequence[Job], *, max_queued: int | None,
                 max_queued_per_user: int | None = None, stored: Stored | None = None) -> list[Job]:
        if self._in_commit():  # the writer thread would wait for this thread's commit, which waits for it
            raise RuntimeError("a submission cannot be made inside one_commit()")
        submission = _Submission(list(jobs), max_queued, max_queued_per_user, stored)
        with self._submitted:
            if self._closing:
                raise StorageError("the database is closed; nothing was changed")
            self._submissions.append(submission)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_submissions, name="herd-store-writer", daemon=True)
                self._writer.start()
            self._submitted.notify()
        submission.done.wait()
        if submission.error is not None:
            raise submission.error
        assert submission.added is not None
        return submission.added

    def _write_submissions(self) -> None:
        """The writer thread: every submission waiting, in one transaction, until the store closes."""
        while True:
            with self._submitted:
                while not self._submissions and not self._closing:
                    self._submitted.wait()
                batch, self._submissions[:] = self._submissions[:MAX_BATCH], self._submissions[MAX_BATCH:]
                if not batch:
                    return
            try:
                self._commit(batch)
            except BaseException as exc:  # a fault of the whole transaction: every submission of it failed
                for submission in batch:
                    submission.added = None
                    submission.error = (StorageError(str(exc)) if isinstance(exc, StorageError) else exc)
            finally:
                for submission in batch:
                    submission.done.set()

    def _commit(self, batch: list[_Submission]) -> None:
        """Write ``batch`` in one transaction; once committed, update the memory and tell ``stored``."""
        with self._lock:  # until the cache matches the database
            waiting = self._waiting.copy()  # the counts with this batch's jobs, kept only if it commits
            keys: dict[tuple[str, str], tuple[str, int]] = {}  # idempotency keys of this batch
            with self._tx() as db:
                for submission in batch:
                    try:
                        submission.added = self._insert(db, submission, waiting, keys)
                    except (QueueFull, AlreadySubmitted) as refused:
                        submission.error = refused
            self._waiting = waiting
            self._counts = self._counts + Counter(j.status for sub in batch for j in sub.added or ())
            for submission in batch:
                for job in submission.added or ():
                    self._active[job.id] = job
                if submission.added and submission.stored is not None:
                    try:
                        submission.stored(submission.added)
                    except Exception:  # stored all the same: its caller is told so, not that it failed
                        log.exception("jobs %s were stored but could not be shown", [j.id for j in submission.added])

    def _insert(self, db: sqlite3.Connection, submission: _Submission, waiting: _Waiting,
                keys: dict[tuple[str, str], tuple[str, int]]) -> list[Job]:
        jobs = submission.jobs
        key = jobs[0].idempotency
        if key is not None:
            found = keys.get((key.scope, key.key)) or db.execute(
                "SELECT fingerprint, job_id FROM idempotency WHERE scope = ? AND key = ?", (key.scope, key.key)).fetchone()
            if found is not None:
                raise AlreadySubmitted(found[1], found[0])
        # The counts are this writer's own (the only one): checked under the transaction's lock.
        waiting.check(jobs, submission.max_queued, submission.max_queued_per_user)
        added: list[Job] = []
        first_id = None
        for i, job in enumerate(jobs):
            cur = db.execute(
                "INSERT INTO jobs (user, status, priority, submit_time, data) VALUES (?, ?, ?, ?, '{}')",
                (job.user, job.status.value, job.priority, job.submit_time),
            )
            if first_id is None:
                first_id = cur.lastrowid
            elif cur.lastrowid != first_id + i:  # ids of one transaction are consecutive
                raise StorageError(f"task ids are not consecutive ({cur.lastrowid} after {first_id})")
            job = _with_array(job, first_id, i)
            db.execute("UPDATE jobs SET data = ? WHERE id = ?", (job.model_dump_json(), job.id))
            added.append(job)
        assert first_id is not None
        if key is not None:
            db.execute("INSERT INTO idempotency (scope, key, fingerprint, job_id) VALUES (?, ?, ?, ?)",
                       (key.scope, key.key, key.fingerprint, first_id))
            keys[key.scope, key.key] = (key.fingerprint, first_id)
        for event in _submitted_events(added):
            self._insert_event(db, event)
        for job in added:
            waiting.change(None, job)
        return added

    def find_submission(self, scope: str, key: str) -> tuple[str, int] | None:
        rows = self._read("SELECT fingerprint, job_id FROM idempotency WHERE scope = ? AND key = ?", (scope, key))
        return (rows[0][0], rows[0][1]) if rows else None

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
            self._cache(self._active.get(job.id), job)

    def get_job(self, job_id: int) -> Job | None:
        job = self._active.get(job_id)
        if job is not None:
            return job
        if not in_id_range(job_id):
            return None
        rows = self._read("SELECT data FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0][0]) if rows else None

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
        return [_job(r[0]) for r in self._read(sql, args)]

    def page_jobs(
        self, *, statuses: Iterable[JobStatus] | None = None, user: str | None = None, before: int | None = None,
        limit: int, name: str | None = None, array_id: int | None = None, end_reason: str | None = None,
    ) -> list[Job]:
        wanted = None if statuses is None else sorted({JobStatus(s) for s in statuses})
        if wanted is not None and set(wanted) <= ACTIVE:  # all in memory
            return _page(self.active_jobs(), wanted, user, before, limit, name=name, array_id=array_id,
                         end_reason=end_reason)
        where, args = [], []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        for field, value in (("name", name), ("array_id", array_id), ("end_reason", end_reason)):
            if value is not None:
                where.append(f"json_extract(data, '$.{field}') = ?")
                args.append(value)
        if before is not None:
            where.append("id < ?")
            args.append(min(before, MAX_ID))
        if wanted is None:
            sql = "SELECT id, data FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
            rows = self._read(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        else:
            # One walk down an index per status (each at most `limit` rows), merged: never a sort of
            # every job of a status.
            parts, bound = [], []
            for status in wanted:
                parts.append("SELECT * FROM (SELECT id, data FROM jobs WHERE " + " AND ".join(["status = ?", *where])
                             + " ORDER BY id DESC LIMIT ?)")
                bound += [status.value, *args, limit]
            rows = self._read(" UNION ALL ".join(parts) + " ORDER BY 1 DESC LIMIT ?", [*bound, limit])
        return [_job(data) for _, data in rows]

    def ended_since(self, since: float) -> Iterator[Job]:
        after = 0
        while True:
            rows = self._read("SELECT id, data FROM jobs WHERE json_extract(data, '$.end_time') >= ? AND id > ? "
                              "ORDER BY id LIMIT ?", (since, after, ENDED_PAGE))
            for _, data in rows:
                job = _job(data)
                if job.status not in ACTIVE:
                    yield job
            if len(rows) < ENDED_PAGE:
                return
            after = rows[-1][0]

    def active_jobs(self) -> list[Job]:
        return list(self._active.values())  # id order: jobs are added in id order and never come back

    def count_by_status(self) -> dict[JobStatus, int]:
        counts = self._counts  # replaced whole after each commit, never changed: no lock, no wait for a write
        return {s: counts[s] for s in JobStatus}

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
        if job_id is not None and not in_id_range(job_id):
            return []
        sql = "SELECT id, time, kind, job_id, message, data FROM events WHERE id > ?"
        args: list[object] = [min(max(after_id, 0), MAX_ID)]
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [
            Event(id=i, time=t, kind=k, job_id=j, message=m, data=json.loads(d))
            for i, t, k, j, m, d in self._read(sql, args)
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
        rows = self._read("SELECT source, data FROM gpus ORDER BY node, idx")
        return _nodes_from_gpus((source, Gpu.model_validate_json(data)) for source, data in rows)

    def get_usage(self) -> dict[str, tuple[float, float]]:
        rows = self._read("SELECT user, gpu_seconds, as_of FROM usage")
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
        if not in_id_range(reservation_id):
            return False
        with self._tx() as db:
            return db.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)).rowcount > 0

    def update_reservation(self, reservation: Reservation) -> None:
        with self._tx() as db:
            db.execute("UPDATE reservations SET data = ? WHERE id = ?", (reservation.model_dump_json(), reservation.id))

    def reservations(self) -> list[Reservation]:
        rows = self._read("SELECT data FROM reservations ORDER BY id")
        return [Reservation.model_validate_json(data) for (data,) in rows]

    def save_job_usage(self, usage: Mapping[int, JobUsage]) -> None:
        with self._tx() as db:
            db.executemany("INSERT INTO job_usage (job_id, data) VALUES (?, ?) "
                           "ON CONFLICT (job_id) DO UPDATE SET data = excluded.data",
                           [(job_id, u.model_dump_json()) for job_id, u in usage.items()])

    def job_usage(self, job_ids: Iterable[int]) -> dict[int, JobUsage]:
        ids = [i for i in job_ids if in_id_range(i)]
        found = {}
        for start in range(0, len(ids), 500):  # SQLite's limit on variables
            chunk = ids[start:start + 500]
            rows = self._read(f"SELECT job_id, data FROM job_usage WHERE job_id IN ({','.join('?' * len(chunk))})",
                              chunk)
            found.update({job_id: JobUsage.model_validate_json(data) for job_id, data in rows})
        return found

    def get_setting(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def close(self) -> None:
        with self._submitted:
            self._closing = True
            self._submitted.notify()
        if self._writer is not None:
            self._writer.join()  # the submissions handed over are written (or fail) first
        with self._lock:
            for db in self._opened:
                db.close()
            self._opened.clear()
            self._db.close()


class _Submission:
    """One ``add_jobs`` call, waiting for the writer thread: ``added`` or ``error`` once ``done``."""

    def __init__(self, jobs: list[Job], max_queued: int | None, max_queued_per_user: int | None,
                 stored: Stored | None) -> None:
        self.jobs, self.max_queued, self.max_queued_per_user, self.stored = jobs, max_queued, max_queued_per_user, stored
        self.done = threading.Event()
        self.added: list[Job] | None = None
        self.error: BaseException | None = None


def _job(data: str) -> Job:
    """A stored job: valid when it was stored, so limits added since are not applied to it again."""
    return Job.model_validate_json(data, context=STORED)


def _page(jobs: Iterable[Job], statuses: Iterable[JobStatus] | None, user: str | None, before: int | None,
          limit: int, *, name: str | None = None, array_id: int | None = None,
          end_reason: str | None = None) -> list[Job]:
    """``page_jobs`` over jobs in id order."""
    wanted = None if statuses is None else set(statuses)
    found = []
    for job in sorted(jobs, key=lambda j: j.id, reverse=True):
        if (before is None or job.id < before) and (wanted is None or job.status in wanted) \
                and (user is None or job.user == user) and _matches(job, name, array_id, end_reason):
            found.append(job)
            if len(found) == limit:
                break
    return found


def _matches(job: Job, name: str | None, array_id: int | None, end_reason: str | None) -> bool:
    return ((name is None or job.name == name) and (array_id is None or job.array_id == array_id)
            and (end_reason is None or job.end_reason == end_reason))


def _submitted_events(jobs: Sequence[Job]) -> list[Event]:
    """One event for a job; for an array, one for the array (its tasks are told by their ids)."""
    first = jobs[0]
    if first.array_id is None:
        return [_submitted(first)]
    return [Event(time=first.submit_time, kind="submitted", job_id=first.id,
                  message=f"{first.user} submitted array {first.array_id} of {len(jobs)} tasks (jobs {first.id}-"
                          f"{jobs[-1].id}, {first.array}) {first.display_name}: {first.gpu_count} GPU(s) each, "
                          f"priority {first.priority}",
                  data={"array_id": first.array_id, "tasks": len(jobs), "last_job": jobs[-1].id})]


def _submitted(job: Job) -> Event:
    return Event(
        time=job.submit_time,
        kind="submitted",
        job_id=job.id,
        message=f"{job.user} submitted {job.display_name}: {job.gpu_count} GPU(s), priority {job.priority}",
    )


class Unchanged:
    """What ``MemoryStore.one_commit`` hands out: it never fails, so no job is ever put back. It is its
    own context manager, one for every commit: a replay opens a few each pass, and one made by
    ``contextlib.contextmanager`` cost three calls more each time."""

    before: Mapping[int, Job | None] = {}

    def __enter__(self) -> Unchanged:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


UNCHANGED = Unchanged()


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
        self._job_usage: dict[int, JobUsage] = {}
        self._settings: dict[str, str] = {}
        self._reservations: dict[int, Reservation] = {}
        self._next_reservation = 0
        self._waiting = _Waiting()
        self._submissions: dict[tuple[str, str], tuple[str, int]] = {}
        self.fault: StoreFault | None = None  # never: nothing here can fail

    def probe(self) -> StoreFault | None:
        return None

    def add_job(self, job: Job, *, max_queued: int | None, max_queued_per_user: int | None = None,
                stored: Stored | None = None) -> Job:
        return self.add_jobs([job], max_queued=max_queued, max_queued_per_user=max_queued_per_user, stored=stored)[0]

    def add_jobs(self, jobs: Sequence[Job], *, max_queued: int | None,
                 max_queued_per_user: int | None = None, stored: Stored | None = None) -> list[Job]:
        key = jobs[0].idempotency
        if key is not None and (key.scope, key.key) in self._submissions:
            fingerprint, job_id = self._submissions[key.scope, key.key]
            raise AlreadySubmitted(job_id, fingerprint)
        self._waiting.check(jobs, max_queued, max_queued_per_user)
        first_id = len(self._jobs) + 1
        added = [_with_array(job, first_id, i) for i, job in enumerate(jobs)]
        for job in added:
            self._jobs[job.id] = self._active[job.id] = job
            self._waiting.change(None, job)
        if key is not None:
            self._submissions[key.scope, key.key] = (key.fingerprint, first_id)
        if self._keep_events:
            for event in _submitted_events(added):
                self.add_event(event)
        if stored is not None:
            stored(added)
        return added

    def one_commit(self) -> Unchanged:
        """Nothing to commit here, and nothing can fail: writes are kept as they are made."""
        return UNCHANGED

    def save_job(self, job: Job, event: Event | None) -> None:
        job_id, status = job.id, job.status
        old = self._jobs[job_id]
        old_status = old.status
        held = old_status in HOLDS_GPUS and old.allocation is not None
        holds = status in HOLDS_GPUS and job.allocation is not None
        # Handed over unless the same GPUs, or none, are held before and after (``is`` first: scheduled ->
        # running keeps the very allocation, and a model's ``!=`` is slow).
        if held != holds or (holds and old.allocation is not job.allocation and old.allocation != job.allocation):
            self._hand_over(old, job, held, holds)
        if old_status is _QUEUED or status is _QUEUED:  # (a start or an end counts no waiting job)
            self._waiting.change(old, job)
        self._jobs[job_id] = job
        if status in ACTIVE:
            self._active[job_id] = job
        else:
            self._active.pop(job_id, None)
        if event is not None:
            self.add_event(event)

    def _hand_over(self, old: Job, job: Job, held: bool, holds: bool) -> None:
        """The GPUs ``old`` held are let go and those ``job`` holds taken, unless another job holds one
        (``held``, ``holds``: whether ``old`` and ``job`` hold GPUs)."""
        holders = self._holders
        if not holds:  # an end (or a requeue): nothing to take, so nothing to check
            for key in dict.fromkeys(old.allocation.pairs()):  # type: ignore[union-attr]
                del holders[key]
            return
        wanted = set(job.allocation.pairs())  # type: ignore[union-attr]
        before = set(old.allocation.pairs()) if held else set()  # type: ignore[union-attr]
        for key in wanted - before if before else wanted:  # (a start holds nothing before: no difference)
            holder = holders.get(key)
            if holder is not None and holder != job.id:
                raise GpuConflict(f"job {job.id}: {job.allocation} overlaps GPUs job {holder} holds")
        for key in before - wanted:
            del holders[key]
        holders.update(dict.fromkeys(wanted, job.id))

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

    def page_jobs(
        self, *, statuses: Iterable[JobStatus] | None = None, user: str | None = None, before: int | None = None,
        limit: int, name: str | None = None, array_id: int | None = None, end_reason: str | None = None,
    ) -> list[Job]:
        top = len(self._jobs) if before is None else min(before - 1, len(self._jobs))  # ids are 1, 2, ...
        wanted = None if statuses is None else set(statuses)
        found = []
        for job_id in range(top, 0, -1):
            job = self._jobs[job_id]
            if (wanted is None or job.status in wanted) and (user is None or job.user == user) \
                    and _matches(job, name, array_id, end_reason):
                found.append(job)
                if len(found) == limit:
                    break
        return found

    def ended_since(self, since: float) -> Iterator[Job]:
        return iter([j for j in self._jobs.values() if j.status not in ACTIVE and j.end_time is not None
                     and j.end_time >= since])

    def find_submission(self, scope: str, key: str) -> tuple[str, int] | None:
        return self._submissions.get((scope, key))

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

    def update_reservation(self, reservation: Reservation) -> None:
        self._reservations[reservation.id] = reservation

    def save_job_usage(self, usage: Mapping[int, JobUsage]) -> None:
        self._job_usage.update(usage)

    def job_usage(self, job_ids: Iterable[int]) -> dict[int, JobUsage]:
        return {i: self._job_usage[i] for i in job_ids if i in self._job_usage}

    def reservations(self) -> list[Reservation]:
        return list(self._reservations.values())

    def get_setting(self, key: str) -> str | None:
        return self._settings.get(key)

    def set_setting(self, key: str, value: str) -> None:
        self._settings[key] = value

    def close(self) -> None:
        pass
