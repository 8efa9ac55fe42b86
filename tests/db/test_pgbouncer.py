"""The loader through a real PgBouncer (Debian's 1.18), in transaction and session pooling.

More clients than server connections, from several threads and processes at
once, so a client's successive transactions land on different server
connections: nothing may rely on the session (prepared statements, LISTEN, a
temp table's existence) across transactions. Following progress needs a direct
connection for LISTEN and refuses a transaction pooler in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from helpers.checks import assert_totals_match_recount
from helpers.pgbouncer import TRANSACTION_POOL, admin, through
from psycopg.rows import dict_row

from loader import follow_progress, get_progress, make_pool, recount_batch, register_batch, save_batch
from loader.cli import cli
from loader.copy import STAGE_IMAGES
from loader.datagen import make_batch
from loader.demo import write_demo_file
from loader.errors import ConfigurationError, DatabaseError
from loader.lifecycle.repair import count_rejects, list_rejects
from loader.models import ProcessStatus
from loader.testing import pgbouncer_server

LOADER = Path(sys.executable).parent / "loader"

#: Clients at once in transaction pooling: 4x the server connections.
CLIENTS = 8
#: Calls of each kind per client: past psycopg's default prepare_threshold (5),
#: after which it would prepare a query on the server.
ROUNDS = 7
#: Images per chunk and chunks per batch of the API workload.
CHUNK = 10
CHUNKS = ROUNDS


def _workload(pool_or_conn: Any, batch_id: str) -> None:
    """Every public call, ROUNDS times each, for one batch; one input per chunk is not JSON."""
    register_batch(pool_or_conn, batch_id, CHUNK * CHUNKS)
    data = make_batch(CHUNK * CHUNKS, prefix=batch_id)
    for k in range(CHUNKS):
        chunk: list[Any] = list(data[k * CHUNK : (k + 1) * CHUNK])
        chunk[0] = b"{not json"
        register_batch(pool_or_conn, batch_id, CHUNK * CHUNKS)  # idempotent
        save_batch(pool_or_conn, batch_id, chunk, position_offset=k * CHUNK)
        assert get_progress(pool_or_conn, batch_id).accounted_images == (k + 1) * CHUNK
        assert len(list_rejects(pool_or_conn, batch_id)) == k + 1
        assert count_rejects(pool_or_conn, batch_id).open == k + 1
        assert recount_batch(pool_or_conn, batch_id).failed_images == k + 1


def _expect_finished(db: psycopg.Connection[Any], batch_id: str) -> None:
    progress = get_progress(db, batch_id)
    assert (progress.status, progress.completed_images, progress.failed_images) == (
        ProcessStatus.SUCCESS,
        CHUNK * CHUNKS - CHUNKS,
        CHUNKS,
    )
    assert_totals_match_recount(db, batch_id)


def _pools_seen(bouncer: str, dbname: str) -> tuple[int, int]:
    """(client connections, server connections) PgBouncer holds for ``dbname``."""
    with psycopg.connect(admin(bouncer), autocommit=True, row_factory=dict_row) as console:
        clients = [r for r in console.execute("SHOW CLIENTS").fetchall() if r["database"] == dbname]
        servers = [r for r in console.execute("SHOW SERVERS").fetchall() if r["database"] == dbname]
    return len(clients), len(servers)


@pytest.fixture
def pooled(bouncer_transaction: str, dsn: str) -> str:
    """The test database through PgBouncer in transaction pooling."""
    return through(bouncer_transaction, dsn)


def test_every_call_works_from_more_threads_than_server_connections(
    pooled: str, bouncer_transaction: str, db: psycopg.Connection[Any]
) -> None:
    pool = make_pool(pooled, min_size=CLIENTS, max_size=CLIENTS)
    pool.open(wait=True)
    try:
        with ThreadPoolExecutor(max_workers=CLIENTS) as workers:
            done = list(workers.map(lambda i: _workload(pool, f"thr-{i}"), range(CLIENTS)))
        clients, servers = _pools_seen(bouncer_transaction, db.info.dbname)
    finally:
        pool.close()

    assert len(done) == CLIENTS
    assert clients >= CLIENTS and servers <= TRANSACTION_POOL
    for i in range(CLIENTS):
        _expect_finished(db, f"thr-{i}")


def test_a_connection_handed_in_works_too(pooled: str, db: psycopg.Connection[Any]) -> None:
    # Another client keeps transactions going meanwhile, so this one's move
    # between the server connections.
    stop = threading.Event()

    def churn() -> None:
        with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as other:
            while not stop.is_set():
                other.execute("SELECT pg_sleep(0.001)")

    busy = threading.Thread(target=churn)
    busy.start()
    try:
        with psycopg.connect(pooled) as conn:
            _workload(conn, "handed-in")
            assert conn.prepare_threshold == 5  # the caller's setting, restored after each call
    finally:
        stop.set()
        busy.join()
    _expect_finished(db, "handed-in")


def test_a_prepare_threshold_set_for_a_pooler_without_prepared_statements_fails_with_advice(
    pg_server: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOADER_PREPARE_THRESHOLD", "0")  # prepare every query at once
    with psycopg.connect(dsn) as direct:
        register_batch(direct, "prep", 1)
    # One server connection: the two clients' statements, named alike, meet on it.
    with (
        pgbouncer_server(pg_server, "transaction", 1) as bouncer,
        psycopg.connect(through(bouncer, dsn)) as first,
        psycopg.connect(through(bouncer, dsn)) as second,
    ):
        get_progress(first, "prep")
        with pytest.raises(DatabaseError) as caught:
            get_progress(second, "prep")

    message = str(caught.value)
    assert "42P05" in message and "transaction pooler" in message and "LOADER_PREPARE_THRESHOLD" in message
    assert "check the server log" not in message and not caught.value.transient


def test_staging_tables_are_made_again_on_a_server_connection_that_lacks_them(
    pg_server: str, dsn: str, db: psycopg.Connection[Any]
) -> None:
    data = make_batch(20, prefix="tmp")
    with (
        pgbouncer_server(pg_server, "transaction", 2) as bouncer,
        psycopg.connect(through(bouncer, dsn)) as saver,
    ):
        url = through(bouncer, dsn)
        with psycopg.connect(url) as holder_a, psycopg.connect(url) as holder_b:
            # holder_a pins one server connection: the first save runs on the other.
            holder_a.execute("SELECT 1")
            save_batch(saver, "tmp", data[:10], total_images=20)
            # holder_b pins that other one; holder_a lets go of the first: the
            # second save runs there, where no save ran before.
            holder_b.execute("SELECT 1")
            holder_a.rollback()
            save_batch(saver, "tmp", data[10:], position_offset=10)
            holder_b.rollback()
        staging = db.execute(
            "SELECT count(*) FROM pg_class WHERE relname = %s AND relpersistence = 't'", [STAGE_IMAGES.table]
        ).fetchone()

    assert staging == (2,)  # one per server connection the saves ran on
    assert get_progress(db, "tmp").completed_images == 20


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOADER), *args, "--dsn", url], capture_output=True, text=True, timeout=240, check=False
    )


def _load(url: str, path: Path, batch_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(LOADER), "load", str(path), "-b", batch_id, "--chunk-size", "20", "--json", "--dsn", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    where = tmp_path_factory.mktemp("pgbouncer")
    return [write_demo_file(where / f"p{i}.jsonl", 200, f"proc-{i}").path for i in range(3)]


def _loads_and_calls_at_once(url: str, inputs: list[Path], api_clients: int) -> None:
    """Three `loader load` processes and API threads together, all through ``url``."""
    loads = [_load(url, path, f"proc-{i}") for i, path in enumerate(inputs)]
    pool = make_pool(url, max_size=api_clients)
    pool.open(wait=True)
    try:
        with ThreadPoolExecutor(max_workers=api_clients) as workers:
            list(workers.map(lambda i: _workload(pool, f"api-{i}"), range(api_clients)))
    finally:
        pool.close()
    for proc in loads:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert json.loads(out)["received"] == 200


def _check_cli_reads(url: str, db: psycopg.Connection[Any]) -> None:
    for i in range(3):
        assert_totals_match_recount(db, f"proc-{i}")
        status = _run(url, "status", f"proc-{i}", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "SUCCESS"
        rejects = _run(url, "rejects", f"proc-{i}", "--json")
        assert rejects.returncode == 0, rejects.stderr
        assert len(rejects.stdout.splitlines()) == 2  # the demo file's cut and repeated lines
    listing = _run(url, "status", "--json")
    assert listing.returncode == 0, listing.stderr
    assert {b["batch_id"] for b in json.loads(listing.stdout)} >= {"proc-0", "proc-1", "proc-2"}


def test_cli_processes_and_api_threads_at_once_in_transaction_pooling(
    pooled: str, inputs: list[Path], db: psycopg.Connection[Any]
) -> None:
    _loads_and_calls_at_once(pooled, inputs, api_clients=4)

    _check_cli_reads(pooled, db)
    for i in range(4):
        _expect_finished(db, f"api-{i}")


def test_cli_processes_and_api_threads_at_once_in_session_pooling(
    bouncer_session: str, dsn: str, inputs: list[Path], db: psycopg.Connection[Any]
) -> None:
    url = through(bouncer_session, dsn)
    # Each client holds a server connection for its session: three loads and
    # one API client fill the pool (SESSION_POOL); the later CLI reads reuse its connections.
    _loads_and_calls_at_once(url, inputs, api_clients=1)

    _check_cli_reads(url, db)
    _expect_finished(db, "api-0")


def test_following_through_a_transaction_pooler_is_refused_in_one_line(
    pooled: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "fol", 10)

    refused = CliRunner().invoke(cli, ["status", "fol", "--follow", "--dsn", pooled])
    with pytest.raises(ConfigurationError, match="transaction pooler"):
        next(follow_progress(pooled, "fol"))

    assert refused.exit_code == 1 and len(refused.stderr.splitlines()) == 1
    assert "--listen-dsn" in refused.stderr and "did not arrive" in refused.stderr


@pytest.fixture
def finish_later(dsn: str) -> Iterator[threading.Event]:
    """Set it once the follower listens: the batch 'fol' then gets its last images."""
    listening = threading.Event()

    def finish() -> None:
        if listening.wait(60):
            with psycopg.connect(dsn) as c:
                save_batch(c, "fol", make_batch(10, prefix="fol")[5:], position_offset=5)

    worker = threading.Thread(target=finish)
    worker.start()
    yield listening
    listening.set()
    worker.join()


def test_following_listens_on_the_direct_connection_given(
    pooled: str, dsn: str, conn: psycopg.Connection[Any], finish_later: threading.Event
) -> None:
    register_batch(conn, "fol", 10)
    save_batch(conn, "fol", make_batch(10, prefix="fol")[:5])

    seen = []
    for progress in follow_progress(pooled, "fol", listen_dsn=dsn, idle_timeout=60):
        seen.append((progress.status, progress.completed_images))
        finish_later.set()

    assert seen == [(ProcessStatus.STARTED, 5), (ProcessStatus.SUCCESS, 10)]


def test_status_follow_takes_the_listening_connection_from_the_environment(
    pooled: str, dsn: str, conn: psycopg.Connection[Any], finish_later: threading.Event
) -> None:
    register_batch(conn, "fol", 10)
    save_batch(conn, "fol", make_batch(10, prefix="fol")[:5])
    finish_later.set()  # may land before or after the first line: both end at SUCCESS

    result = CliRunner().invoke(
        cli, ["status", "fol", "--follow", "--json", "--dsn", pooled], env={"LOADER_LISTEN_DSN": dsn}
    )

    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["status"] == "SUCCESS"


def test_following_works_through_session_pooling(
    bouncer_session: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "done", 3)
    save_batch(conn, "done", make_batch(3, prefix="done"))

    (only,) = follow_progress(through(bouncer_session, dsn), "done")

    assert only.status == ProcessStatus.SUCCESS


def test_preparing_can_be_turned_back_on_for_a_direct_connection(dsn: str) -> None:
    pool = make_pool(dsn, max_size=1, prepare_threshold=1)
    pool.open(wait=True)
    try:
        for _ in range(3):
            register_batch(pool, "prepared", 1)
        with pool.connection() as c:
            prepared = c.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False).fetchone()
    finally:
        pool.close()
    with psycopg.connect(dsn) as c:  # psycopg's default threshold: 5
        for _ in range(ROUNDS):
            register_batch(c, "prepared", 1)
        unprepared = c.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False).fetchone()

    assert prepared is not None and prepared[0] > 0
    assert unprepared == (0,)  # the default: nothing prepared on the server


def test_an_unusable_prepare_threshold_is_refused_in_one_line(dsn: str) -> None:
    result = CliRunner().invoke(cli, ["status", "--dsn", dsn], env={"LOADER_PREPARE_THRESHOLD": "often"})

    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "LOADER_PREPARE_THRESHOLD='often'" in result.stderr


def test_status_follow_listens_on_the_listen_dsn_option(
    pooled: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    save_batch(conn, "done", make_batch(3, prefix="done"))

    result = CliRunner().invoke(cli, ["status", "done", "--follow", "--dsn", pooled, "--listen-dsn", dsn])

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "batch done: SUCCESS, 3 of 3 images accounted for (100.0%): 3 completed, 0 failed"
    ]
