"""Storage faults: the real ``sqlite3.OperationalError``s injected under the store (and a real lock held
by another connection), through the store and through REST. A fault answers 503 with one line, changes
nothing in the database or in memory, shows in ``/healthz``, and goes away without a restart."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

import pytest

from agent.service import Service
from tests.rest import T0
from tools.clock import SimClock
from tools.models import Job, JobStatus
from tools.nvml import UnavailableProbe
from tools.sim_executor import SimExecutor
from tools.orchestrator import UnrecordedEnds
from tools.store import SqliteStore, StorageError

LOCKED = "database is locked"
IO_ERROR = "disk I/O error"


class _Faulty:
    """A connection that raises ``sqlite3.OperationalError(message)`` for statements starting with one of
    ``on`` (upper case) while ``armed``; everything else goes to the real connection."""

    def __init__(self, real: sqlite3.Connection, message: str, on: tuple[str, ...]) -> None:
        self.real, self.message, self.on, self.armed = real, message, on, True

    def execute(self, sql: str, *args):
        if self.armed and sql.lstrip().upper().startswith(self.on):
            raise sqlite3.OperationalError(self.message)
        return self.real.execute(sql, *args)

    def executemany(self, sql: str, *args):
        if self.armed and sql.lstrip().upper().startswith(self.on):
            raise sqlite3.OperationalError(self.message)
        return self.real.executemany(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@contextlib.contextmanager
def failing_writes(store: SqliteStore, message: str, on: tuple[str, ...] = ("BEGIN",)):
    """Every write transaction fails as SQLite fails it (at ``BEGIN IMMEDIATE`` when the file is
    locked; at ``COMMIT`` or a statement for an I/O error), until the block ends."""
    real = store._db
    store._db = faulty = _Faulty(real, message, on)
    try:
        yield faulty
    finally:
        faulty.armed = False
        store._db = real


@contextlib.contextmanager
def failing_reads(store: SqliteStore, message: str):
    """Every read fails, until the block ends."""
    pool = []
    while not store._readers.empty():
        pool.append(store._readers.get())
    new_reader = store._new_reader
    faulty = [_Faulty(db, message, ("SELECT",)) for db in pool]
    for db in faulty:
        store._readers.put(db)
    store._new_reader = lambda: _Faulty(new_reader(), message, ("SELECT",))
    try:
        yield
    finally:
        del store._new_reader
        drained = []
        while not store._readers.empty():
            drained.append(store._readers.get())
        for db in drained:
            store._readers.put(db.real if isinstance(db, _Faulty) else db)


def new_job(user="ana") -> Job:
    return Job(id=0, user=user, command="true", gpu_count=1, submit_time=1.0)


# -- the store itself ----------------------------------------------------------------------------------
@pytest.mark.parametrize("message, on", [(LOCKED, ("BEGIN",)), (IO_ERROR, ("COMMIT",)), (IO_ERROR, ("INSERT", "UPDATE"))],
                         ids=["locked", "commit-io-error", "statement-io-error"])
def test_a_failed_write_changes_nothing_and_the_next_one_works(tmp_path, message, on):
    store = SqliteStore(tmp_path / "herd.db")
    first = store.add_job(new_job(), max_queued=None)
    with failing_writes(store, message, on):
        with pytest.raises(StorageError, match=message) as raised:
            store.add_job(new_job("bob"), max_queued=None)
        assert "\n" not in str(raised.value) and "nothing was changed" in str(raised.value)
        with pytest.raises(StorageError):
            store.save_job(first.model_copy(update={"status": JobStatus.CANCELLED}), None)
        assert store.fault is not None and store.fault.operation == "write"
    assert [j.id for j in store.active_jobs()] == [first.id]  # the cache is as the database
    assert store.get_job(first.id).status == JobStatus.QUEUED
    assert not store._db.in_transaction  # no transaction left open to block the next one
    second = store.add_job(new_job("bob"), max_queued=None)
    assert second.id == first.id + 1 and store.fault is None
    reopened = SqliteStore(tmp_path / "herd.db")
    assert [j.id for j in reopened.list_jobs()] == [first.id, second.id]


def test_a_probe_finds_the_fault_gone(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    with failing_writes(store, IO_ERROR):
        with pytest.raises(StorageError):
            store.set_setting("policy", "fcfs")
        assert store.probe().message == IO_ERROR
    assert store.probe() is None and store.fault is None


def test_reads_do_not_wait_for_a_write_stuck_on_the_lock(tmp_path):
    """Another process holds the database's write lock: a write waits its busy timeout and fails, and
    while it waits (holding the store's own lock) every read answers at once."""
    store = SqliteStore(tmp_path / "herd.db", busy_timeout_s=2.0)
    done = store.add_job(new_job(), max_queued=None)
    store.save_job(done.model_copy(update={"status": JobStatus.COMPLETED}), None)  # a read goes to the file
    other = sqlite3.connect(tmp_path / "herd.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    failed: list[BaseException] = []

    def write():
        try:
            store.add_job(new_job("bob"), max_queued=None)
        except StorageError as exc:
            failed.append(exc)

    writer = threading.Thread(target=write)
    t0 = time.monotonic()
    writer.start()
    time.sleep(0.2)  # the writer now waits for the lock, holding the store's
    assert writer.is_alive()
    reads = time.monotonic()
    assert store.get_job(done.id).status == JobStatus.COMPLETED
    assert [j.id for j in store.page_jobs(limit=10)] == [done.id]
    assert store.count_by_status()[JobStatus.COMPLETED] == 1
    assert time.monotonic() - reads < 0.5
    writer.join()
    other.execute("ROLLBACK")
    assert 1.5 < time.monotonic() - t0 < 10 and LOCKED in str(failed[0])
    assert store.add_job(new_job("bob"), max_queued=None).id == done.id + 1  # the lock is free again


# -- through REST --------------------------------------------------------------------------------------
def counts(api) -> dict:
    return api.http.get("/orchestrator/status").json()["counts"]


@pytest.mark.parametrize("message, on", [(LOCKED, ("BEGIN",)), (IO_ERROR, ("COMMIT",))], ids=["locked", "io-error"])
def test_a_storage_fault_is_a_503_that_changes_nothing_and_heals(api, message, on):
    queued = api.submit_ok()
    before = (api.all_jobs(), api.http.get("/queue").json())
    with failing_writes(api.service.store, message, on):
        for response in (api.submit(), api.http.delete(f"/queue/{queued}"),
                         api.http.patch(f"/queue/{queued}/priority", json={"priority": 9})):
            assert response.status_code == 503, response.text
            detail = response.json()["detail"]
            assert message in detail and "\n" not in detail and response.headers["retry-after"] == "1"
        health = api.http.get("/healthz").json()
        assert (health["ok"], health["status"], health["storage_error"]) == (False, "degraded", message)
        assert health["storage_error_at"] == T0 and any(message in p for p in health["problems"])
        assert (api.all_jobs(), api.http.get("/queue").json()) == before
    health = api.http.get("/healthz").json()  # its probe finds the database writable again
    assert (health["ok"], health["storage_error"]) == (True, None)
    assert api.submit_ok() == queued + 1
    assert api.http.delete(f"/queue/{queued}").json()["status"] == "cancelled"


def test_a_tick_that_cannot_write_leaves_no_gpu_held_and_the_next_one_starts_the_job(api):
    job_id = api.submit_ok(gpu_count=4)
    with failing_writes(api.service.store, IO_ERROR, ("COMMIT",)):
        with pytest.raises(StorageError):
            api.tick()
        assert api.job(job_id)["status"] == "queued"
        assert api.service.queue.index.get(job_id).status == JobStatus.QUEUED  # memory as the database
        assert api.sim.running == {}
    api.tick()
    assert api.job(job_id)["status"] == "running"


def test_reads_that_fail_are_503_too(api):
    job_id = api.submit_ok()
    api.http.delete(f"/queue/{job_id}")  # finished: read from the database, not the cache
    with failing_reads(api.service.store, IO_ERROR):
        for path in ("/jobs", f"/jobs/{job_id}"):
            response = api.http.get(path)
            assert (response.status_code, IO_ERROR in response.json()["detail"]) == (503, True), path
        status = api.http.get("/orchestrator/status")  # its counts are kept in memory, read from no file
        assert (status.status_code, status.json()["counts"]["cancelled"]) == (200, 1)
    assert api.http.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def reopened(api) -> Service:
    """A new service on the same work directory, as after a restart."""
    api.service.store.close()
    service = Service(api.service.settings, clock=SimClock(T0), executor=SimExecutor(),
                      probe=UnavailableProbe("no NVML in tests"), run_loop=False)
    return service


@pytest.mark.parametrize("path, body, field, want", [
    ("/orchestrator/stop", None, "state", "running"),
    ("/orchestrator/policy", {"policy": "fcfs"}, "policy", "multifactor"),
], ids=["stop", "policy"])
def test_a_setting_that_cannot_be_saved_is_not_taken(api, path, body, field, want):
    request = (lambda: api.http.put(path, json=body)) if body else (lambda: api.http.post(path))
    with failing_writes(api.service.store, IO_ERROR, ("COMMIT",)):
        assert request().status_code == 503
        assert api.http.get("/orchestrator/status").json()[field] == want  # not changed in memory either
    changed = request()
    assert changed.status_code == 200 and changed.json()[field] != want
    service = reopened(api)
    try:  # saved: a restart keeps it
        assert (service.orchestrator.enabled if field == "state" else service.orchestrator.policy.name) == \
            (False if field == "state" else "fcfs")
    finally:
        service.store.close()
        service.audit.close()


def test_a_bug_is_a_json_500_with_one_line(api, monkeypatch):
    from tools.door import jobs

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody expected\nsecond line")

    monkeypatch.setattr(jobs, "list_jobs", broken)
    response = api.http.get("/jobs")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (RuntimeError: something nobody expected); "
                                          "the server's log has the details"}


# -- a pass's writes in one commit -----------------------------------------------------------------------
class _FailsNthCommit(_Faulty):
    """The ``n``-th ``COMMIT`` from now fails with a disk I/O error; the others go through."""

    def __init__(self, real: sqlite3.Connection, n: int) -> None:
        super().__init__(real, IO_ERROR, ("COMMIT",))
        self.left = n

    def execute(self, sql: str, *args):
        if self.armed and sql.lstrip().upper().startswith("COMMIT"):
            self.left -= 1
            self.armed = self.left > 0
            if self.left == 0:
                raise sqlite3.OperationalError(self.message)
        return self.real.execute(sql, *args)


@contextlib.contextmanager
def failing_commit(store: SqliteStore, n: int):
    real = store._db
    store._db = _FailsNthCommit(real, n)
    try:
        yield
    finally:
        store._db = real


def memory(store: SqliteStore):
    return (store.active_jobs(), store.count_by_status(), store._waiting.submissions, +store._waiting.by_user)


def test_one_commit_writes_everything_once_and_a_failed_one_leaves_disk_and_memory_as_they_were(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    a, b, c = (store.add_job(new_job(user), max_queued=None) for user in ("ana", "bob", "cy"))
    with store.one_commit() as commit:
        store.save_job(a.model_copy(update={"status": JobStatus.CANCELLED}), None)
        store.set_usage("ana", 5.0, 1.0)
        assert store.get_usage()["ana"] == (5.0, 1.0)  # this thread reads what it wrote, not yet committed
        store.save_job(b.model_copy(update={"priority": 9}), None)
    assert set(commit.before) == {a.id, b.id} and commit.before[a.id] == a
    reopened = SqliteStore(tmp_path / "herd.db")
    assert [j.id for j in reopened.active_jobs()] == [b.id, c.id] and reopened.get_usage()["ana"] == (5.0, 1.0)
    assert memory(reopened) == memory(store)

    b9, before = store.get_job(b.id), memory(store)
    with failing_commit(store, 1):
        with pytest.raises(StorageError, match=IO_ERROR):
            with store.one_commit() as commit:
                store.save_job(b9.model_copy(update={"status": JobStatus.CANCELLED}), None)
                store.save_job(c.model_copy(update={"priority": 2}), None)
                store.set_usage("bob", 7.0, 2.0)
    assert commit.before == {b.id: b9, c.id: c}  # what was put back
    assert memory(store) == before and store.get_job(b.id) == b9 and "bob" not in store.get_usage()
    assert not store._db.in_transaction
    assert memory(SqliteStore(tmp_path / "herd.db")) == before  # disk and memory agree


def test_a_nested_commit_that_fails_undoes_only_itself(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    a, b = (store.add_job(new_job(user), max_queued=None) for user in ("ana", "bob"))
    with store.one_commit() as outer:
        store.save_job(a.model_copy(update={"priority": 8}), None)
        with pytest.raises(ValueError):
            with store.one_commit() as inner:
                store.save_job(b.model_copy(update={"status": JobStatus.CANCELLED}), None)
                raise ValueError("this job's end could not be worked out")
        assert inner.before == {b.id: b} and store.get_job(b.id) == b
    assert set(outer.before) == {a.id}
    reopened = SqliteStore(tmp_path / "herd.db")
    assert (reopened.get_job(a.id).priority, reopened.get_job(b.id).status) == (8, JobStatus.QUEUED)


@pytest.mark.parametrize("n, what", [(1, "the ends"), (2, "the reservations"), (3, "the starts")])
def test_a_pass_whose_commit_fails_leaves_memory_as_the_database_and_the_next_pass_catches_up(api, n, what):
    """A pass commits the ends it collected, then the GPUs it reserves, then the starts (with the
    reasons the others wait). Whichever commit fails, memory (the store's and the queue's index) is
    put back as the database has it, no GPU is held by a job that does not run, and the next pass
    records what happened."""
    first = api.submit_ok(gpu_count=4)
    api.tick()
    assert api.job(first)["status"] == "running"
    second = api.submit_ok(gpu_count=4)
    api.sim.finish(first, 0, api.clock.now())
    store, index = api.service.store, api.service.queue.index
    with failing_commit(store, n), pytest.raises(UnrecordedEnds if what == "the ends" else StorageError):
        api.tick()
    on_disk = {j.id: j.status for j in SqliteStore(store._path).list_jobs()}
    assert {j: store.get_job(j).status for j in on_disk} == on_disk  # the store's memory is the disk's
    assert {j: index.get(j).status for j in on_disk if index.get(j) is not None} == \
        {j: s for j, s in on_disk.items() if s in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RUNNING)}
    if what == "the ends":  # the end stays with the executor: the job keeps its GPUs, the next job waits
        assert on_disk == {first: JobStatus.RUNNING, second: JobStatus.QUEUED} and api.sim.running == {}
    elif what == "the reservations":  # nothing reserved, nothing started
        assert on_disk == {first: JobStatus.COMPLETED, second: JobStatus.QUEUED} and api.sim.running == {}
    else:  # started, but stored as reserved only: the next pass records that it runs
        assert on_disk == {first: JobStatus.COMPLETED, second: JobStatus.SCHEDULED} and second in api.sim.running
    api.tick()
    api.tick()
    assert (api.job(first)["status"], api.job(second)["status"]) == ("completed", "running")
    assert api.job(second)["start_time"] is not None
