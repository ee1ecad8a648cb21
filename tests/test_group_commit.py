"""Group commit: submissions arriving together are written in one transaction (one fsync), each caller
answered only once it is on disk; a refusal leaves out only its own submission; a failed transaction
fails every submission of it and leaves neither the database nor memory (the store's cache, the queue's
index) with any of them."""

from __future__ import annotations

import threading

import pytest

from tests.builders import spec
from tests.cores import make_core
from tests.test_store_faults import IO_ERROR, failing_writes
from tools.models import IdempotencyKey, Job, JobStatus
from tools.store import AlreadySubmitted, QueueFull, SqliteStore, StorageError


class Commits:
    """Counts the COMMITs sent on the store's writing connection."""

    def __init__(self, store: SqliteStore) -> None:
        self.real, self.count = store._db, 0
        store._db = self

    def execute(self, sql: str, *args):
        self.count += sql.strip().upper() == "COMMIT"
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


class Appends(list):
    """The store's list of waiting submissions, counting what was ever handed to it (the writer may
    already have taken some, however many had arrived when it woke)."""

    count = 0

    def append(self, item) -> None:
        self.count += 1
        super().append(item)


def new_job(user: str = "ana", key: str | None = None, fingerprint: str = "f") -> Job:
    idempotency = None if key is None else IdempotencyKey(scope=user, key=key, fingerprint=fingerprint)
    return Job(id=0, user=user, command="true", gpu_count=1, submit_time=1.0, idempotency=idempotency)


def submit_together(store: SqliteStore, jobs: list[Job], **limits) -> list[Job | BaseException]:
    """Hand every job, in order, to the store from a thread of its own while its writer is held up, so
    that they wait together; then let it go. Each thread's result: the stored job or what it raised."""
    results: list[Job | BaseException | None] = [None] * len(jobs)

    def submit(i: int) -> None:
        try:
            results[i] = store.add_job(jobs[i], max_queued=limits.get("max_queued"),
                                       max_queued_per_user=limits.get("max_queued_per_user"))
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(jobs))]
    with store._submitted:
        store._submissions = handed = Appends(store._submissions)
    with store._lock:  # the writer waits here with its first batch; the rest queue up behind it
        for i, t in enumerate(threads):  # one at a time, so that they are handed over in order
            t.start()
            while handed.count <= i:
                threading.Event().wait(0.001)
    for t in threads:
        t.join(10)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def test_submissions_that_arrive_together_share_one_transaction(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    commits = Commits(store)
    results = submit_together(store, [new_job(f"u{i}") for i in range(30)])
    assert all(isinstance(r, Job) for r in results)
    assert sorted(r.id for r in results) == list(range(1, 31))
    # The writer's first batch is whatever had arrived when it woke (often one); the rest wait together.
    assert commits.count <= 2
    reopened = SqliteStore(tmp_path / "herd.db")
    assert sorted(j.id for j in reopened.list_jobs()) == list(range(1, 31))
    assert reopened.count_by_status()[JobStatus.QUEUED] == store.count_by_status()[JobStatus.QUEUED] == 30
    assert len(reopened.events(limit=100)) == 30


def test_a_refused_submission_is_left_out_and_the_others_are_stored(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    first = store.add_job(new_job("ana", key="k1"), max_queued=None)
    jobs = [new_job("ana", key="k1"), new_job("bob", key="k2"), new_job("bob", key="k2", fingerprint="g"),
            new_job("cat"), new_job("cat"), new_job("cat")]
    results = submit_together(store, jobs, max_queued_per_user=2)
    again, bob, bob_again, *cats = results
    assert isinstance(again, AlreadySubmitted) and again.job_id == first.id  # the key of an earlier batch
    assert isinstance(bob, Job)
    assert isinstance(bob_again, AlreadySubmitted) and (bob_again.job_id, bob_again.fingerprint) == (bob.id, "f")
    assert sum(isinstance(r, Job) for r in cats) == 2 and sum(isinstance(r, QueueFull) for r in cats) == 1
    stored = store.list_jobs()
    assert sorted(j.user for j in stored) == ["ana", "bob", "cat", "cat"]
    assert store.find_submission("bob", "k2") == ("f", bob.id)
    assert [j.id for j in SqliteStore(tmp_path / "herd.db").list_jobs()] == [j.id for j in stored]


@pytest.mark.parametrize("on", [("COMMIT",), ("INSERT",)], ids=["commit", "statement"])
def test_a_failed_transaction_fails_every_submission_of_it_and_stores_none(tmp_path, on):
    store = SqliteStore(tmp_path / "herd.db")
    kept = store.add_job(new_job(), max_queued=None)
    with failing_writes(store, IO_ERROR, on):
        results = submit_together(store, [new_job(f"u{i}", key=f"k{i}") for i in range(8)])
    assert all(isinstance(r, StorageError) and IO_ERROR in str(r) for r in results)
    assert [j.id for j in store.active_jobs()] == [kept.id]  # memory as the database
    assert store.count_by_status()[JobStatus.QUEUED] == 1
    assert store.find_submission("u0", "k0") is None
    assert [j.id for j in SqliteStore(tmp_path / "herd.db").list_jobs()] == [kept.id]
    retried = store.add_job(new_job("u0", key="k0"), max_queued=None)  # the next one works
    assert retried.id == kept.id + 1 and store.fault is None


def test_the_queue_index_shows_a_job_only_once_it_is_stored(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    core = make_core(store=store, max_queue_size=100)
    with failing_writes(store, IO_ERROR, ("COMMIT",)):
        with pytest.raises(StorageError):
            core.orchestrator.submit(spec(1))
    assert core.queue.index.queued_count == 0 and store.active_jobs() == []
    job = core.orchestrator.submit(spec(1))
    assert core.queue.index.get(job.id) == job and core.queue.index.queued_count == 1
    assert core.queue.history.batch_of(job.id) is not None


def test_a_closed_store_refuses_a_submission(tmp_path):
    store = SqliteStore(tmp_path / "herd.db")
    store.add_job(new_job(), max_queued=None)
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.add_job(new_job(), max_queued=None)
