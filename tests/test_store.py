"""The store contract, run against SQLite and its in-memory twin."""

import sqlite3

import pytest

from tools.models import Allocation, Event, Job, JobStatus
from tools.store import GpuConflict, MemoryStore, QueueFull, SqliteStore


def new_job(user="alice", gpus=1, t=1.0) -> Job:
    return Job(id=0, user=user, command="true", gpu_count=gpus, submit_time=t)


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    s = SqliteStore(tmp_path / "herd.db") if request.param == "sqlite" else MemoryStore()
    yield s
    s.close()


def test_ids_are_assigned_and_jobs_read_back(store):
    a, b = store.add_job(new_job(), max_queued=None), store.add_job(new_job("bob"), max_queued=None)
    assert (a.id, b.id) == (1, 2)
    assert store.get_job(2) == b
    assert store.get_job(99) is None
    assert [j.id for j in store.list_jobs(user="bob")] == [2]
    assert [e.kind for e in store.events()] == ["submitted", "submitted"]


def test_queue_limit_is_enforced_at_insert(store):
    store.add_job(new_job(), max_queued=2)
    store.add_job(new_job(), max_queued=2)
    with pytest.raises(QueueFull, match="the queue is full \\(2 jobs waiting\\)"):
        store.add_job(new_job(), max_queued=2)
    assert len(store.list_jobs()) == 2


def test_a_gpu_cannot_be_held_twice(store):
    a, b = store.add_job(new_job(gpus=2), max_queued=None), store.add_job(new_job(gpus=2), max_queued=None)
    store.save_job(a.model_copy(update={"status": JobStatus.RUNNING, "allocation": Allocation(node="n", gpus=(0, 1))}), None)
    clash = b.model_copy(update={"status": JobStatus.SCHEDULED, "allocation": Allocation(node="n", gpus=(1, 2))})
    with pytest.raises(GpuConflict):
        store.save_job(clash, Event(time=2.0, kind="scheduled", job_id=b.id))
    assert store.get_job(b.id).status == JobStatus.QUEUED  # nothing written
    assert [e.kind for e in store.events(job_id=b.id)] == ["submitted"]


def test_released_gpus_can_be_taken_again(store):
    a, b = store.add_job(new_job(), max_queued=None), store.add_job(new_job(), max_queued=None)
    held = Allocation(node="n", gpus=(0,))
    store.save_job(a.model_copy(update={"status": JobStatus.RUNNING, "allocation": held}), None)
    store.save_job(store.get_job(a.id).model_copy(update={"status": JobStatus.COMPLETED}), None)
    store.save_job(b.model_copy(update={"status": JobStatus.RUNNING, "allocation": held}), None)
    assert [j.id for j in store.active_jobs()] == [b.id]
    assert store.count_by_status()[JobStatus.COMPLETED] == 1


def test_gpus_kept_across_saves_and_moved_are_let_go(store):
    """A save that keeps a job's GPUs (scheduled, then running) changes no holder; one that moves it to
    other GPUs lets the old ones go, and only those."""
    a, b = store.add_job(new_job(gpus=2), max_queued=None), store.add_job(new_job(gpus=2), max_queued=None)
    first, moved = Allocation(node="n", gpus=(0, 1)), Allocation(node="n", gpus=(2, 3))
    store.save_job(a.model_copy(update={"status": JobStatus.SCHEDULED, "allocation": first}), None)
    store.save_job(store.get_job(a.id).model_copy(update={"status": JobStatus.RUNNING}), None)
    with pytest.raises(GpuConflict):
        store.save_job(b.model_copy(update={"status": JobStatus.SCHEDULED, "allocation": first}), None)
    store.save_job(store.get_job(a.id).model_copy(update={"allocation": moved}), None)
    store.save_job(b.model_copy(update={"status": JobStatus.SCHEDULED, "allocation": first}), None)
    with pytest.raises(GpuConflict):
        store.save_job(store.get_job(b.id).model_copy(update={"allocation": moved}), None)
    assert store.get_job(b.id).allocation == first and store.get_job(a.id).allocation == moved


def test_settings_and_usage(store):
    assert store.get_setting("policy") is None
    store.set_setting("policy", "fcfs")
    store.set_setting("policy", "sjf")
    assert store.get_setting("policy") == "sjf"
    store.set_usage("alice", 3600.0, 10.0)
    assert store.get_usage() == {"alice": (3600.0, 10.0)}


def test_sqlite_is_durable_and_in_wal_mode(tmp_path):
    path = tmp_path / "herd.db"
    s = SqliteStore(path)
    job = s.add_job(new_job(), max_queued=None)
    # A second connection (another process would see the same) reads the acknowledged write.
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    other.close()
    s.close()
    assert SqliteStore(path).get_job(job.id) == job
