"""`loader schema adopt`: the application's tables, as its ORM created them, into schema.sql.

One transaction, all or nothing. In it:

1. take the deployment lock and ACCESS EXCLUSIVE locks on the five application tables;
2. read the catalog and recognise the shape SQLAlchemy's ``create_all`` gives the
   original models (loader/schema/adopt_shape.py); anything else is refused with one line per
   difference, before anything changes;
3. find old rows that break a constraint of schema.sql (adopt.sql, ``adopt_dirty_rows``):
   refuse, or with ``set_aside`` move them (and the rows that hang on them) to
   ``loader_adopt_set_aside``, each with its original row as json and the reasons;
4. rename the old tables, their indexes and sequences aside; run schema.sql itself
   (so the end state is exactly a fresh install, checked by ``loader schema check``);
   copy every row over with its id, converting types (naive timestamps read in an
   explicit time zone), relabelling statuses, giving failed OCR rows a stated
   placeholder error and boxes their id order as reading order; recompute every
   batch's totals and status as the merge does; continue the identities past max(id);
   carry the owner and the grants of each old table over; drop the old tables.

Rewriting the tables instead of altering them in place costs the same locks (a type
change rewrites a table either way) and avoids the ALTER pitfalls: the application's
unique indexes carry its foreign keys, serial defaults own sequences, enum columns
need their defaults dropped first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from loader import queries
from loader.connection import SCHEMA_VERSION
from loader.dsn import check_dsn
from loader.errors import AdoptError, DirtyRowsError, UnknownShapeError, translating
from loader.schema.adopt_shape import STAMPS, TABLES, Inspection, fetch, inspect
from loader.schema.check import package_body

# The error an adopted failed OCR row carries: the old table had no error column,
# and schema.sql requires one on every failed row (ocr_executions_error_iff_failed).
PLACEHOLDER_ERROR = "failed (no error recorded: adopted from the application's table, which had none)"
# Rows of each broken rule shown as examples (the count is always complete).
EXAMPLES_PER_RULE = 3
# Old tables are renamed with this prefix while their rows are copied.
OLD_PREFIX = "loader_adopt_old_"
# Seconds adopt waits for its exclusive locks before giving up (see _lock).
LOCK_TIMEOUT_S = 10
# Seconds between two attempts at the locks: the application's transactions holding
# a table get to finish instead of meeting adopt's next request at once.
LOCK_PAUSE_S = 0.05
# PostgreSQL truncates identifiers longer than this many bytes.
MAX_IDENTIFIER = 63

# Children first: the order old rows are set aside (deleted) in.
BOTTOM_UP = ("ocr_text_boxes", "task_logs", "ocr_executions", "chain_executions", "batch_executions")

OLD_ENUMS = ("processstatus", "ocrstatus")


@dataclass
class BrokenRule:
    """One constraint of schema.sql and the old rows that break it."""

    rule: str
    table: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.rule}: {self.count} row(s) of {self.table}, e.g. {'; '.join(self.examples)}"


@dataclass
class AdoptReport:
    """What adopt found and did (or, on a dry run, would do)."""

    namespace: str
    state: str  # "adopted", "nothing to do", "dry run"
    message: str = ""
    statements: list[str] = field(default_factory=list)
    broken: list[BrokenRule] = field(default_factory=list)
    rows_before: dict[str, int] = field(default_factory=dict)
    rows_after: dict[str, int] = field(default_factory=dict)
    set_aside: dict[str, int] = field(default_factory=dict)
    #: Naive times --timezone names no instant or two of (converted all the same, see docs/adoption.md).
    local_times: list[BrokenRule] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------
# Old rows that break the loader's constraints
# --------------------------------------------------------------------------------------


def broken_rules(conn: psycopg.Connection[Any]) -> tuple[list[BrokenRule], list[tuple[str, int, str]]]:
    """Per rule, the count and a few examples; and every offending (table, id, rule)."""
    rules: dict[str, BrokenRule] = {}
    offending: list[tuple[str, int, str]] = []
    for r in fetch(conn, "adopt_dirty_rows"):
        rule = rules.setdefault(r["rule"], BrokenRule(r["rule"], r["table_name"]))
        rule.count += 1
        if len(rule.examples) < EXAMPLES_PER_RULE:
            rule.examples.append(f"id {r['id']}" + (f" ({r['detail']})" if r["detail"] else ""))
        offending.append((r["table_name"], int(r["id"]), r["rule"]))
    return list(rules.values()), offending


# What adopt says of a naive time --timezone does not name exactly one instant of.
LOCAL_TIME_RULES = {
    "gap": "naive times in a daylight-saving gap of {tz} (no such local time; read with the offset "
    "in force before the gap, as PostgreSQL does)",
    "overlap": "naive times repeated by a daylight-saving overlap of {tz} (two instants; read as "
    "PostgreSQL does, with the offset in force after the change)",
}


def local_time_problems(
    conn: psycopg.Connection[Any], inspection: Inspection, timezone: str
) -> list[BrokenRule]:
    """Per column and problem, the naive times that name no instant or two in ``timezone``."""
    parts = [
        _named(
            "adopt_local_time_problems",
            table=sql.Identifier(table),
            column=sql.Identifier(column),
            table_label=sql.Literal(table),
            column_label=sql.Literal(column),
        ).query
        for table in TABLES
        for column in STAMPS
        if inspection.columns[table][column]["type"] == "timestamp without time zone"
    ]
    if not parts:
        return []
    query = sql.SQL("\nUNION ALL\n").join(parts) + sql.SQL("\nORDER BY 1, 2, 3")
    found: dict[tuple[str, str, str], BrokenRule] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for r in cur.execute(query, {"tz": timezone}):
            key = (r["table_name"], r["column_name"], r["problem"])
            rule = found.setdefault(
                key, BrokenRule(LOCAL_TIME_RULES[r["problem"]].format(tz=timezone), f"{key[0]}.{key[1]}")
            )
            rule.count += 1
            if len(rule.examples) < EXAMPLES_PER_RULE:
                rule.examples.append(f"id {r['id']} ({r['local_time']:%Y-%m-%d %H:%M:%S})")
    return list(found.values())


# --------------------------------------------------------------------------------------
# The statements
# --------------------------------------------------------------------------------------


@dataclass
class Step:
    """One statement of the plan, with its parameters."""

    query: sql.SQL | sql.Composed
    params: dict[str, Any] = field(default_factory=dict)


def _named(name: str, params: dict[str, Any] | None = None, **parts: sql.Composable) -> Step:
    text: LiteralString = queries.get(name)
    query = sql.SQL(text).format(**parts) if parts else sql.SQL(text)
    return Step(query, params or {})


def _old(name: str) -> str:
    return (OLD_PREFIX + name)[:MAX_IDENTIFIER]


def _rename_steps(conn: psycopg.Connection[Any]) -> list[Step]:
    steps = [
        Step(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(t), sql.Identifier(_old(t))))
        for t in TABLES
    ]
    for r in fetch(conn, "adopt_relations_to_rename", {"tables": list(TABLES)}):
        kind, _, table = r["kind"].partition(" ")
        name, renamed = sql.Identifier(r["name"]), sql.Identifier(_old(r["name"]))
        if kind == "constraint":
            query = sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                sql.Identifier(_old(table)), name, renamed
            )
        else:
            verb = sql.SQL("ALTER INDEX" if kind == "index" else "ALTER SEQUENCE")
            query = sql.SQL("{} {} RENAME TO {}").format(verb, name, renamed)
        steps.append(Step(query))
    return steps


def _timestamp(inspection: Inspection, table: str, column: str) -> sql.Composable:
    ref = sql.Identifier("o", column)
    if inspection.columns[table][column]["type"] == "timestamp without time zone":
        # Read in the zone the DBA named, never in the session's TimeZone.
        return sql.SQL("({} AT TIME ZONE %(tz)s)").format(ref)
    return ref


def _copy_steps(inspection: Inspection, timezone: str) -> list[Step]:
    has_task_name = "task_name" in inspection.columns["task_logs"]
    names = {
        "batch_executions": "adopt_copy_batches",
        "chain_executions": "adopt_copy_chains",
        "task_logs": "adopt_copy_task_logs",
        "ocr_executions": "adopt_copy_ocr",
        "ocr_text_boxes": "adopt_copy_boxes",
    }
    steps = []
    for table in TABLES:
        parts: dict[str, sql.Composable] = {c: _timestamp(inspection, table, c) for c in STAMPS}
        if table == "task_logs":
            parts["task_name"] = sql.SQL("o.task_name") if has_task_name else sql.SQL("NULL")
        params: dict[str, Any] = {}
        if any(inspection.columns[table][c]["type"] == "timestamp without time zone" for c in STAMPS):
            params["tz"] = timezone
        if table == "ocr_executions":
            params["placeholder"] = PLACEHOLDER_ERROR
        steps.append(_named(names[table], params, **parts))
    return steps


def _ownership_steps(conn: psycopg.Connection[Any], inspection: Inspection) -> list[Step]:
    """The old tables' owners and others' grants, carried over to the new tables."""
    me = fetch(conn, "adopt_session")[0]["role"]
    steps = [
        Step(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(t), sql.Identifier(owner)))
        for t, owner in sorted(inspection.tables.items())
        if owner != me
    ]
    for g in fetch(conn, "adopt_table_grants", {"tables": list(TABLES)}):
        grantee = sql.SQL("PUBLIC") if g["grantee"] is None else sql.Identifier(g["grantee"])
        steps.append(
            Step(
                sql.SQL("GRANT {} ON {} TO {}{}").format(
                    sql.SQL(g["privilege"]),
                    sql.Identifier(g["table_name"]),
                    grantee,
                    sql.SQL(" WITH GRANT OPTION" if g["is_grantable"] else ""),
                )
            )
        )
    return steps


def _set_aside_steps() -> list[Step]:
    steps = [
        _named("adopt_aside_chains_of_batches"),
        _named("adopt_aside_ocr_of_chains"),
        _named("adopt_aside_chains_left_without_ocr"),
        _named("adopt_aside_task_logs_of_chains"),
        _named("adopt_aside_boxes_of_ocr"),
    ]
    steps += [_named("adopt_move_aside", table=sql.Identifier(t), label=sql.Literal(t)) for t in BOTTOM_UP]
    return steps


def plan(conn: psycopg.Connection[Any], inspection: Inspection, timezone: str) -> list[Step]:
    """Every statement of the conversion, in order (the dirty-row handling excepted)."""
    enums = [
        r["name"]
        for r in fetch(conn, "adopt_unused_old_enums", {"enums": list(OLD_ENUMS), "tables": list(TABLES)})
    ]
    steps = _rename_steps(conn)
    steps.append(Step(sql.SQL(package_body())))
    steps += _copy_steps(inspection, timezone)
    steps.append(_named("adopt_restart_identities"))
    steps += _ownership_steps(conn, inspection)
    steps.append(_named("adopt_drop_old_tables"))
    steps += [Step(sql.SQL("DROP TYPE {}").format(sql.Identifier(name))) for name in enums]
    steps.append(_named("adopt_analyze"))
    return steps


def _render(conn: psycopg.Connection[Any], step: Step) -> str:
    text = step.query.as_string(conn)
    if step.params:
        return psycopg.ClientCursor(conn).mogrify(text, step.params)
    return text


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def _counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = fetch(conn, "adopt_counts")
    return {k: int(v) for k, v in rows[0].items()}


def _check_timezone(conn: psycopg.Connection[Any], timezone: str) -> None:
    row = conn.execute(queries.get("adopt_timezone_known"), {"tz": timezone}).fetchone()
    if not (row and row[0]):
        raise AdoptError(
            f"unknown time zone {timezone!r}: name one of pg_timezone_names (e.g. UTC, Asia/Seoul)"
        )


def _settle(inspection: Inspection, report: AdoptReport) -> bool:
    """Fill in the report for a database with nothing to adopt; True when there is nothing to do."""
    if inspection.version == SCHEMA_VERSION:
        report.state = "nothing to do"
        report.message = (
            f"schema {inspection.namespace!r} already holds loader schema version {SCHEMA_VERSION}; "
            "nothing to do"
        )
        return True
    if inspection.version is not None:
        raise AdoptError(
            f"schema {inspection.namespace!r} holds loader schema version {inspection.version}, not an "
            "application's tables; upgrade it with `loader schema upgrade`"
        )
    if inspection.differences:
        raise UnknownShapeError(inspection.differences)
    return False


def _set_aside(conn: psycopg.Connection[Any], offending: list[tuple[str, int, str]]) -> dict[str, int]:
    conn.execute(queries.get("adopt_set_aside_table"))
    conn.execute(queries.get("adopt_aside_temp"))
    with (
        conn.cursor() as cur,
        cur.copy("COPY pg_temp.loader_adopt_aside (table_name, id, reason) FROM STDIN") as copy,
    ):
        for table, row_id, rule in offending:
            copy.write_row((table, row_id, f"breaks {rule}"))
    for step in _set_aside_steps():
        conn.execute(step.query, step.params)
    return {r["table_name"]: int(r["n"]) for r in fetch(conn, "adopt_aside_counts")}


def _lock(conn: psycopg.Connection[Any], timeout_s: float) -> None:
    """Lock the tables, or give up soon: a waiting ACCESS EXCLUSIVE request queues every
    reader of the application behind it, so waiting long would look like an outage.

    The tables are locked in one statement, in foreign-key order, but a writer of the
    application may hold one of them and then want another that adopt already holds.
    Each attempt therefore waits at most half the server's deadlock_timeout and, when it
    fails, rolls back to its savepoint, releasing what it took: the writer goes on before
    anyone's deadlock check runs, so adopt neither dies of a deadlock nor kills a writer.
    """
    deadline = time.monotonic() + timeout_s
    attempt_s = fetch(conn, "adopt_deadlock_timeout")[0]["ms"] / 2000
    while True:
        wait_ms = max(int(min(attempt_s, deadline - time.monotonic()) * 1000), 1)
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{wait_ms}ms")))
        try:
            with conn.transaction():
                conn.execute(queries.get("adopt_lock_tables"))
            break
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            if time.monotonic() >= deadline:
                raise AdoptError(
                    f"the application's tables are in use (no exclusive lock within {timeout_s:g} s); "
                    "stop the application's workers and API, then adopt; nothing changed"
                ) from exc
            time.sleep(LOCK_PAUSE_S)
    conn.execute("SET LOCAL lock_timeout = DEFAULT")


def adopt(
    conninfo: str,
    *,
    dry_run: bool = False,
    timezone: str = "UTC",
    set_aside: bool = False,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> AdoptReport:
    """Convert the application's tables at ``conninfo`` into the loader schema (see the module doc).

    Raises UnknownShapeError (nothing changed) on tables it does not recognise and
    DirtyRowsError (nothing changed) on rows that break the loader's constraints,
    unless ``set_aside``; AdoptError when the tables stay locked by others for
    ``lock_timeout_s``. A dry run changes nothing and reports the statements.
    """
    check_dsn(conninfo)
    started = time.perf_counter()
    with (
        translating("adopting the application's tables (rolled back, nothing changed)"),
        psycopg.connect(conninfo) as conn,
    ):
        if dry_run:
            conn.read_only = True
        report = _run(conn, dry_run, timezone, set_aside, lock_timeout_s)
        if dry_run or report.state != "adopted":
            conn.rollback()
        else:
            conn.commit()
    report.seconds = time.perf_counter() - started
    return report


def _run(
    conn: psycopg.Connection[Any], dry_run: bool, timezone: str, set_aside: bool, lock_timeout_s: float
) -> AdoptReport:
    if not dry_run:
        conn.execute(queries.get("adopt_lock"))
    inspection = inspect(conn)
    report = AdoptReport(inspection.namespace, "dry run" if dry_run else "adopted")
    if _settle(inspection, report):
        return report
    _check_timezone(conn, timezone)
    # Nobody writes an old row between the checks below and the copy.
    lock = _named("adopt_lock_tables")
    if not dry_run:
        _lock(conn, lock_timeout_s)
    report.rows_before = _counts(conn)
    report.broken, offending = broken_rules(conn)
    report.local_times = local_time_problems(conn, inspection, timezone)
    steps = plan(conn, inspection, timezone)
    if dry_run:
        head = [Step(sql.SQL("BEGIN")), _named("adopt_lock"), lock]
        if set_aside and offending:
            head += [_named("adopt_set_aside_table"), _named("adopt_aside_temp")]
            head.append(
                Step(sql.SQL("-- COPY pg_temp.loader_adopt_aside: the rows breaking a rule, listed above"))
            )
            head += _set_aside_steps()
        report.statements = [_render(conn, s) for s in [*head, *steps, Step(sql.SQL("COMMIT"))]]
        return report
    if report.broken and not set_aside:
        raise DirtyRowsError(report.broken)
    if offending:
        report.set_aside = _set_aside(conn, offending)
    for step in steps:
        conn.execute(step.query, step.params or None)
    report.rows_after = _counts(conn)
    return report
