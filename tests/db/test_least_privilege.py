"""Least privilege: the whole save path works connected as a login role that
holds only loader_writer's grants (no DDL, no DELETE but of text boxes, no superuser), which
cannot drop, alter, truncate or delete batches; and the password of its DSN
appears in no error, log record or report.

The role connects over TCP (through a local proxy, so that the embedded server,
which listens on a Unix socket only, is reached the same way) with a password.
Roles are cluster-wide: each test creates its own and drops it, even on failure.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from helpers.checks import MERGE_MARK, assert_totals_match_recount, snapshot, stored_totals
from helpers.tcp_proxy import TcpProxy, upstream_of
from psycopg import sql
from psycopg.conninfo import make_conninfo

from loader import (
    ConfigurationError,
    DatabaseError,
    LoaderError,
    OCRResult,
    TextBox,
    get_progress,
    make_pool,
    recount_batch,
    register_batch,
    save_batch,
)
from loader.datagen import make_batch
from loader.errors import redact_dsn
from loader.fields import REPLACED
from loader.schema.apply import apply_schema


@dataclass(frozen=True)
class Role:
    name: str
    password: str
    dsn: str  # over TCP, with the password


# What the save path needs when granted one by one rather than through loader_writer.
_MINIMAL_GRANTS = [
    "GRANT SELECT ON loader_schema_version TO {role}",
    "GRANT SELECT, INSERT ON batch_executions, chain_executions, ocr_executions,"
    " ocr_text_boxes, load_rejects, loader_calls TO {role}",
    # Version 5: only the columns the merge and recount_batch write.
    "GRANT UPDATE (status, total_images, completed_images, failed_images, totals_stale)"
    " ON batch_executions TO {role}",
    "GRANT UPDATE (status, total_tasks, completed_tasks, failed_tasks, position)"
    " ON chain_executions TO {role}",
    # A replace writes every field of the result (loader/fields.py) and its version number.
    f"GRANT UPDATE ({', '.join(f.name for f in REPLACED)}, result_version) ON ocr_executions TO {{role}}",
    # The merge resolves rejects that later inputs repair.
    "GRANT UPDATE (resolved_at, resolved_by) ON load_rejects TO {role}",
    # A lower position taking a duplicated image renames its duplicates (checked for every merge).
    "GRANT UPDATE (reason) ON load_rejects TO {role}",
    # The merge replaces a re-OCRed or repaired result's boxes (checked for every merge).
    "GRANT DELETE ON ocr_text_boxes TO {role}",
    # The merge keeps the results it replaces (result history; checked for every merge).
    "GRANT INSERT ON ocr_result_history TO {role}",
]


@pytest.fixture
def proxy(dsn: str) -> Iterator[TcpProxy]:
    with TcpProxy(upstream_of(dsn)) as p:
        yield p


def _make_role(dsn: str, db: psycopg.Connection[Any], proxy: TcpProxy, grants: str) -> Iterator[Role]:
    name = f"loader_lp_{uuid.uuid4().hex[:10]}"
    password = f"Pw-{uuid.uuid4().hex}-x9"
    ident = sql.Identifier(name)
    if grants == "loader_writer":
        db.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE loader_writer").format(
                ident, sql.Literal(password)
            )
        )
    else:
        db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password)))
        for grant in _MINIMAL_GRANTS:
            db.execute(sql.SQL(grant).format(role=ident))  # type: ignore[arg-type]
    try:
        yield Role(name, password, make_conninfo(proxy.dsn(dsn), user=name, password=password))
    finally:
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [name])
        # Its grants live in this database; everything else it had vanished with its sessions.
        db.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


@pytest.fixture(params=["loader_writer", "minimal"])
def role(
    request: pytest.FixtureRequest, dsn: str, db: psycopg.Connection[Any], proxy: TcpProxy
) -> Iterator[Role]:
    yield from _make_role(dsn, db, proxy, request.param)


@pytest.fixture
def writer(dsn: str, db: psycopg.Connection[Any], proxy: TcpProxy) -> Iterator[Role]:
    yield from _make_role(dsn, db, proxy, "loader_writer")


def _unvalidated(path: str) -> OCRResult:
    box = TextBox.model_construct(text="x", confidence=1.5, bbox=[[0.0, 0.0]])
    return OCRResult.model_construct(
        image_path=path, public_path=None, status="success", error=None, text_boxes=[box]
    )


def test_the_whole_save_path_runs_as_a_role_with_only_the_writer_grants(
    role: Role, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(role.dsn, autocommit=True) as c:
        assert c.execute("SELECT current_user").fetchone() == (role.name,)
        assert c.info.host == "127.0.0.1"  # over TCP, password given
    with psycopg.connect(role.dsn) as c:
        save_batch(c, "owner", make_batch(3, prefix="owned"))
    pool = make_pool(role.dsn, min_size=1, max_size=2, timeout=10)
    pool.open(wait=True)
    try:
        first = make_batch(20, prefix="lp")
        first[3]["text_boxes"][0]["confidence"] = 1.7  # stored as failed
        first[4] = {"image_path": "/lp/upstream", "status": "failed", "error": "engine crashed"}
        chunk1 = [*first[:10], b"not json", make_batch(1, prefix="owned")[0]]  # junk; owned by 'owner'
        chunk2 = [*first[10:], _unvalidated("/lp/refused")]  # the safety net: savepoints, TRUNCATE

        assert register_batch(pool, "lp", 23).total_images == 23
        one = save_batch(pool, "lp", chunk1)
        two = save_batch(pool, "lp", chunk2, position_offset=len(chunk1))
        before = snapshot(db)
        replay = save_batch(pool, "lp", chunk1)

        assert (one.stored, one.failed, one.rejected) == (8, 2, 2)
        assert (two.stored, two.failed, two.attempts) == (10, 1, 2)
        assert (replay.unchanged, snapshot(db)) == (12, before)
        progress = get_progress(pool, "lp")
        assert (progress.completed_images, progress.failed_images, progress.status) == (18, 5, "SUCCESS")
        assert stored_totals(db, "lp") == (23, 18, 5, "SUCCESS")
        assert_totals_match_recount(db, "lp")
    finally:
        pool.close()


_FORBIDDEN = {
    "drop a table": "DROP TABLE ocr_text_boxes",
    "alter a table": "ALTER TABLE ocr_executions ADD COLUMN note text",
    "drop a constraint": "ALTER TABLE ocr_text_boxes DROP CONSTRAINT ocr_text_boxes_confidence_check",
    "disable a trigger": "ALTER TABLE batch_executions DISABLE TRIGGER batch_executions_touch",
    "truncate": "TRUNCATE load_rejects",
    "delete": "DELETE FROM batch_executions",
    "create a table in public": "CREATE TABLE public.intruder (id int)",
    "create a function in public": "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "create a schema": "CREATE SCHEMA intruder",
    "bump the schema version": "INSERT INTO loader_schema_version (version, description) VALUES (9, 'x')",
    "change the schema version": "UPDATE loader_schema_version SET version = 9",
    # GRANT only warns ("no privileges were granted"); the DELETE after it shows that.
    "grant itself more": "GRANT DELETE ON batch_executions TO CURRENT_USER; DELETE FROM batch_executions",
    "become superuser": "ALTER ROLE CURRENT_USER SUPERUSER",
    "create a role": "CREATE ROLE intruder",
    "read server files": "SELECT pg_read_file('PG_VERSION')",
    "run programs": "COPY load_rejects (reason) TO PROGRAM 'true'",
}


def test_the_writer_role_cannot_change_or_destroy_anything(writer: Role, db: psycopg.Connection[Any]) -> None:
    with psycopg.connect(writer.dsn) as c:
        save_batch(c, "kept", make_batch(2))
    before = snapshot(db)
    allowed = []
    with psycopg.connect(writer.dsn, autocommit=True) as c:
        for what, statement in _FORBIDDEN.items():
            try:
                c.execute(statement)
                allowed.append(what)
            except psycopg.errors.InsufficientPrivilege:
                pass
    assert allowed == []
    assert snapshot(db) == before
    assert db.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = %s",
        [writer.name],
    ).fetchone() == (False, False, False, False)


def _leaks(password: str, *texts: str) -> list[str]:
    return [t for t in texts if password in t]


def _exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), "".join(traceback.format_exception(exc))]


def test_passwords_appear_in_no_error_log_record_or_report(
    writer: Role, dsn: str, proxy: TcpProxy, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    pw = writer.password
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []

    # A report, and the loader's log of it.
    pool = make_pool(writer.dsn, min_size=1, max_size=2, timeout=10)
    pool.open(wait=True)
    try:
        report = save_batch(pool, "reported", [*make_batch(3), b"junk"], total_images=5)
        texts.append(report.model_dump_json())
        # A failure mid-call: the connection cut under the pool.
        blocker = psycopg.connect(dsn)
        blocker.execute("SELECT 1 FROM batch_executions WHERE batch_id = 'reported' FOR NO KEY UPDATE")
        try:
            with pytest.raises(DatabaseError) as cut:
                _cut_once_merging(db, proxy, lambda: save_batch(pool, "reported", make_batch(5, prefix="c")))
        finally:
            blocker.close()
        texts += _exception_texts(cut.value)
    finally:
        pool.close()

    # Errors from DSNs that hold the password: an unknown database, a server
    # that does not answer, DSNs libpq cannot parse (it quotes them).
    unknown_db = make_conninfo(writer.dsn, dbname="no_such_database")
    bad = [
        f"postgresql://{writer.name}:{pw} x@127.0.0.1:{proxy.port}/db",  # a space: libpq quotes "pw x"
        f"postgresql://{writer.name}:{pw}@[::1/db",  # libpq quotes the whole URI
        f"host=127.0.0.1 password={pw} x dbname=db",
        f"host=127.0.0.1 password='{pw}",
    ]
    for attempt in [
        lambda: _save_through_new_pool(unknown_db),
        lambda: apply_schema(unknown_db),
        lambda: _save_through_new_pool(make_conninfo(writer.dsn, port="1")),
        *[lambda d=d: make_pool(d) for d in bad],
        *[lambda d=d: apply_schema(d) for d in bad],
    ]:
        with pytest.raises(LoaderError) as failed:
            attempt()
        texts += _exception_texts(failed.value)
    assert sum(1 for t in texts if "cannot be parsed" in t) >= 2 * len(bad)

    for record in caplog.records:
        texts += [record.getMessage(), json.dumps(record.__dict__, default=str)]
        if record.exc_info and record.exc_info[1]:
            texts += _exception_texts(record.exc_info[1])
    assert any("error connecting" in t for t in texts)  # the pool did log its failures
    assert _leaks(pw, *texts) == []


def _save_through_new_pool(conninfo: str) -> None:
    pool = make_pool(conninfo, timeout=1)
    pool.open(wait=False)
    try:
        save_batch(pool, "b", [])
    finally:
        pool.close()


def _cut_once_merging(db: psycopg.Connection[Any], proxy: TcpProxy, call: Any) -> None:
    """Run ``call``, cutting the proxy once its merge waits on a lock."""

    def cut_when_merging() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                " AND wait_event_type = 'Lock' AND query LIKE %s",
                [f"%{MERGE_MARK}%"],
            ).fetchone()
            if row:
                proxy.cut()
                return
            time.sleep(0.02)

    cutter = threading.Thread(target=cut_when_merging)
    cutter.start()
    try:
        call()
    finally:
        cutter.join(35)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://user:Pw-1x9@host:5432/db",
        "postgres://user:Pw-1x9@host1:5432,host2:5433/db?sslmode=require",
        "postgresql://user:Pw-1x9@/db?host=/tmp",
        "host=h user=u password=Pw-1x9 dbname=d",
        "host=h user=u password = Pw-1x9 dbname=d",
        "host=h user=u password='Pw-1x9 with spaces' dbname=d",
        "host=h user=u PASSWORD=Pw-1x9",
        "postgresql://user@host/db?password=Pw-1x9&sslmode=require",
        "postgresql://user:Pw-1x9%40at@host/db",
    ],
)
def test_redact_dsn_hides_the_password_in_every_dsn_form(dsn: str) -> None:
    text = f"could not connect with {dsn}: refused"
    assert "Pw-1x9" not in redact_dsn(text)
    assert "could not connect" in redact_dsn(text)


def test_a_dsn_libpq_cannot_parse_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        make_pool("postgresql://u:Pw-1x9 secret@h/db")
    assert "Pw-1x9" not in str(info.value) and "secret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


# What a compromised worker (the loader_writer role) may not do beyond the save
# path's own writes (docs/security.md): each statement must be refused.
_NOT_A_SAVES_WRITE = {
    "rename a batch": "UPDATE batch_executions SET batch_id = 'renamed'",
    "change a declared total": "UPDATE batch_executions SET declared_images = 1",
    "backdate a batch": "UPDATE batch_executions SET created_at = now() - interval '1 year'",
    "move a chain to another batch": "UPDATE chain_executions SET batch_id = 'other'",
    "change a chain id": "UPDATE chain_executions SET chain_id = 'forged'",
    "steal an image path": "UPDATE ocr_executions SET image_path = image_path || '.stolen'",
    "re-point an OCR row": "UPDATE ocr_executions SET chain_id = chain_id",
    "rename a task": "UPDATE task_logs SET task_id = 'forged'",
    "edit the call ledger": "UPDATE loader_calls SET inputs = 0",
    "empty the call ledger": "DELETE FROM loader_calls",
    "delete rejects": "DELETE FROM load_rejects",
    "delete results": "DELETE FROM ocr_executions",
    "delete chains": "DELETE FROM chain_executions",
    "delete task logs": "DELETE FROM task_logs",
    "edit a reject's input": "UPDATE load_rejects SET raw = 'x'",
    "edit a box": "UPDATE ocr_text_boxes SET text = 'forged'",
}


def test_the_writer_role_updates_only_the_columns_a_save_writes(
    writer: Role, db: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(writer.dsn) as c:
        save_batch(c, "kept", [*make_batch(2, prefix="cols"), b"junk"])
    db.execute("INSERT INTO batch_executions (batch_id, total_images) VALUES ('other', 1)")
    db.execute("INSERT INTO task_logs (task_id, status) VALUES ('t1', 'SUCCESS')")
    before = snapshot(db)
    allowed = []
    with psycopg.connect(writer.dsn, autocommit=True) as c:
        for what, statement in _NOT_A_SAVES_WRITE.items():
            try:
                c.execute(statement)  # type: ignore[arg-type]
                allowed.append(what)
            except psycopg.errors.InsufficientPrivilege:
                pass
    assert allowed == []
    assert snapshot(db) == before


def test_replace_repair_and_the_task_log_run_with_only_the_writer_grants(
    writer: Role, db: psycopg.Connection[Any]
) -> None:
    role = writer
    from loader import queries

    first = make_batch(4, prefix="cols")
    broken = [*first[:3], b"not json"]
    with psycopg.connect(role.dsn) as c:
        save_batch(c, "grants", broken)
        again = [dict(r, model_version="v2") for r in first]
        replaced = save_batch(c, "grants", again[:3], replace=True)
        repaired = save_batch(c, "grants", [again[3]], position_offset=3, repair=True)
        task = {"task_id": "t-1", "task_name": "ocr", "chain_id": None, "retries": 0, "error": None}
        c.execute(queries.get("tasklog_upsert"), {**task, "status": "STARTED"})
        c.execute(queries.get("tasklog_upsert"), {**task, "status": "SUCCESS", "retries": 1})
        c.commit()
    assert (replaced.replaced, repaired.stored) == (3, 1)
    assert_totals_match_recount(db, "grants")
    assert db.execute("SELECT status::text, retries FROM task_logs WHERE task_id = 't-1'").fetchone() == (
        "SUCCESS",
        1,
    )
    assert db.execute("SELECT count(*) FROM ocr_executions WHERE model_version = 'v2'").fetchone() == (4,)


def test_forged_counters_cannot_make_retention_delete_an_unfinished_batch(
    writer: Role, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    from datetime import UTC, datetime, timedelta

    from loader.lifecycle.delete import delete_finished

    with psycopg.connect(writer.dsn) as c:
        save_batch(c, "half", make_batch(1, prefix="half"), total_images=2)
    with psycopg.connect(writer.dsn, autocommit=True) as c:
        # What a compromised worker can write: the counters, the status, the stale mark.
        c.execute(
            "SELECT set_config('loader.keeping_totals', 'on', false);"
            "UPDATE batch_executions SET status = 'SUCCESS', completed_images = 2, totals_stale = false"
        )
    assert stored_totals(db, "half")[1:] == (2, 0, "SUCCESS")
    db.execute("SET session_replication_role = replica")
    for table in ("batch_executions", "chain_executions", "ocr_executions", "ocr_text_boxes"):
        db.execute(f"UPDATE {table} SET updated_at = now() - interval '40 days'")  # type: ignore[arg-type]
    db.execute("UPDATE loader_calls SET committed_at = now() - interval '40 days'")
    db.execute("RESET session_replication_role")

    assert delete_finished(conn, datetime.now(UTC) - timedelta(days=30)) == []
    assert recount_batch(conn, "half").status == "STARTED"  # the rows' figures, back in place
