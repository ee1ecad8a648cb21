"""The write transactions of ``tools.store.SqliteStore``: one write, or many writes in one commit.

A write (``Transaction``) is ``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock, or ``ROLLBACK``
on any exception. Inside a ``Commit`` opened by the same thread it is a ``SAVEPOINT`` of that commit
instead: nothing reaches the disk until the commit ends, and a write that fails (a GPU given twice) is
undone alone.

A ``Commit`` is how a scheduler pass writes everything it changed in one step (the ends it collected,
the jobs it reserved GPUs for, the jobs it started with the reasons the others wait) with one fsync
instead of one per change. Every job the store saves inside it is logged with what it replaced; when
the commit fails (a statement, or the ``COMMIT`` itself) the database is rolled back and the store's
memory put back from that log, so disk and memory agree again, and the caller learns which jobs were
put back (``before``) to do the same with the views it keeps. Commits nest: an inner one is a
savepoint, whose failure undoes only what was written inside it.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING

from tools.models import Job

if TYPE_CHECKING:
    from tools.store import SqliteStore


class Transaction:
    """One write: ``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception, under the store's
    lock; a savepoint of the commit this thread has open, if any.

    A database fault (not a refusal such as a constraint) is remembered by the store and raised as
    ``StorageError``; after a failed ``COMMIT`` the transaction is rolled back, so the connection is
    never left inside one and the next transaction can work."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, store: SqliteStore) -> None:
        self._db, self._lock, self._store = db, lock, store
        self._savepoint = False

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        # Holding the lock, an open commit can only be this thread's (it holds the lock until it ends).
        self._savepoint = self._store._open_commit is not None
        try:
            if self._savepoint:
                self._db.execute("SAVEPOINT write")
            else:
                if self._db.in_transaction:  # left over by a rollback that failed too
                    self._db.execute("ROLLBACK")
                self._db.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            self._lock.release()
            raise self._store._failed("write", exc) from exc
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self._db.execute("RELEASE write" if self._savepoint else "COMMIT")
                except (sqlite3.Error, OSError) as failed:
                    self._rollback()
                    raise self._store._failed("write", failed) from failed
                if not self._savepoint:
                    self._store.fault = None
                return
            self._rollback()
            if isinstance(exc, (sqlite3.Error, OSError)) and not isinstance(exc, sqlite3.IntegrityError):
                raise self._store._failed("write", exc) from exc
        finally:
            self._lock.release()

    def _rollback(self) -> None:
        try:
            if self._savepoint:
                self._db.execute("ROLLBACK TO write")
                self._db.execute("RELEASE write")
            elif self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except (sqlite3.Error, OSError):
            pass  # the next transaction tries again (a commit around this one fails, and rolls back)


class Commit:
    """``SqliteStore.one_commit()``: the writes of the thread that opened it, committed together when the
    block ends. ``before``: job id -> the job as it was before the block changed it (None: it was not an
    active job), filled as the block saves jobs; after a failure, the jobs that were put back."""

    def __init__(self, store: SqliteStore, parent: Commit | None) -> None:
        self._store, self._parent = store, parent
        self._name = f"commit{0 if parent is None else parent._depth + 1}"
        self._depth = 0 if parent is None else parent._depth + 1
        self._mark = len(store._undo)  # where this block's entries start in the store's undo log
        self.before: dict[int, Job | None] = {}

    def begin(self) -> None:
        db = self._store._db
        try:
            if self._parent is not None:
                db.execute(f"SAVEPOINT {self._name}")
            else:
                if db.in_transaction:  # left over by a rollback that failed too
                    db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            raise self._store._failed("write", exc) from exc

    def saved(self, job_id: int, was: Job | None) -> None:
        """The store saved a new version of a job inside this block (and its parents)."""
        scope: Commit | None = self
        while scope is not None:
            scope.before.setdefault(job_id, was)
            scope = scope._parent

    def end(self) -> None:
        """Commit (or release the savepoint); on failure, roll back and put the memory back."""
        store = self._store
        try:
            store._db.execute(f"RELEASE {self._name}" if self._parent is not None else "COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self.fail()
            raise store._failed("write", exc) from exc
        if self._parent is None:
            store._undo.clear()
            store.fault = None

    def fail(self) -> None:
        """Roll back what this block wrote and put the store's memory back as it was when it began."""
        store = self._store
        try:
            if self._parent is not None:
                store._db.execute(f"ROLLBACK TO {self._name}")
                store._db.execute(f"RELEASE {self._name}")
            elif store._db.in_transaction:
                store._db.execute("ROLLBACK")
        except (sqlite3.Error, OSError):
            pass  # the connection is left for the next transaction to roll back
        store._restore(self._mark)
        # Jobs saved only inside this block are not changed in the parent's eyes any more.
        parent = self._parent
        while parent is not None:
            kept = {job_id for job_id, _, _ in store._undo[parent._mark:]}
            for job_id in [j for j in parent.before if j not in kept]:
                del parent.before[job_id]
            parent = parent._parent
