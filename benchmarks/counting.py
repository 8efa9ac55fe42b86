"""Counting the statements an approach makes the server execute.

In order of preference:
1. ``pg_stat_statements`` (needs the module preloaded; the embedded PostgreSQL 18
   of loader.testing has it): the calls of top-level statements in the
   approach's database, read before and after from another database, so the
   reading itself is not counted and nothing is reset.
2. The server log: the counting connections are opened with
   ``log_statement=all`` (superuser only) and the lines of the approach's
   database are counted in the log file, read through ``pg_read_file``.
3. Neither available: the approach's own client-side count, labelled so.

Nested statements (the foreign-key checks the server runs for every row) are
not counted by any of them: they are the same 7 per image for every approach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PG_STAT_STATEMENTS = "pg_stat_statements"
SERVER_LOG = "server log"
CLIENT = "client-side"


@dataclass
class Counter:
    """Counts statements executed in one database of the benchmark server."""

    maintenance_dsn: str
    method: str
    log_path: str | None = None

    def counting_dsn(self, dsn: str) -> str:
        """The DSN the counted run connects with (statement logging on when counting by log)."""
        if self.method != SERVER_LOG:
            return dsn
        options = conninfo_to_dict(dsn).get("options") or ""
        return make_conninfo(
            dsn, options=f"{options} -c log_statement=all -c log_parameter_max_length=0".strip()
        )

    def mark(self, dbname: str) -> int:
        """An opaque position before the counted run."""
        with psycopg.connect(self.maintenance_dsn, autocommit=True) as conn:
            if self.method == PG_STAT_STATEMENTS:
                return _stat_calls(conn, dbname)
            if self.method == SERVER_LOG:
                row = conn.execute("SELECT size FROM pg_stat_file(%s)", [self.log_path]).fetchone()
                return int(row[0]) if row else 0
        return 0

    def since(self, dbname: str, mark: int) -> int | None:
        """Statements executed in ``dbname`` since ``mark``; None if it cannot be told."""
        with psycopg.connect(self.maintenance_dsn, autocommit=True) as conn:
            if self.method == PG_STAT_STATEMENTS:
                return _stat_calls(conn, dbname) - mark
            if self.method == SERVER_LOG:
                return _log_lines(conn, self.log_path or "", mark, dbname)
        return None


def _stat_calls(conn: psycopg.Connection[Any], dbname: str) -> int:
    row = conn.execute(
        """
        SELECT coalesce(sum(s.calls), 0)
        FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
        WHERE d.datname = %s AND s.toplevel
        """,
        [dbname],
    ).fetchone()
    return int(row[0]) if row else 0


def _log_lines(conn: psycopg.Connection[Any], path: str, start: int, dbname: str) -> int | None:
    row = conn.execute("SELECT size FROM pg_stat_file(%s)", [path]).fetchone()
    end = int(row[0]) if row else 0
    if end < start:
        return None  # rotated meanwhile
    # Counted on the server: the log of 210,000 statements is tens of MB.
    # The line prefix holds user@database (Debian's default, checked by detect()).
    row = conn.execute(
        """
        SELECT count(*)
        FROM regexp_split_to_table(pg_read_file(%(path)s, %(start)s, %(length)s), E'\\n') AS line
        WHERE strpos(line, %(db)s) > 0
          AND (strpos(line, ' LOG:  statement: ') > 0 OR strpos(line, ' LOG:  execute ') > 0)
        """,
        {"path": path, "start": start, "length": end - start, "db": f"@{dbname} "},
    ).fetchone()
    return int(row[0]) if row else None


def detect(maintenance_dsn: str) -> Counter:
    """The best statement counter this server offers."""
    with psycopg.connect(maintenance_dsn, autocommit=True) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        if preload and PG_STAT_STATEMENTS in str(preload[0]):
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            return Counter(maintenance_dsn, PG_STAT_STATEMENTS)
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        prefix = conn.execute("SHOW log_line_prefix").fetchone()
        if not (superuser and superuser[0] and prefix and "%u@%d" in str(prefix[0])):
            return Counter(maintenance_dsn, CLIENT)
        path = _log_file(conn)
        if path is None:
            return Counter(maintenance_dsn, CLIENT)
        return Counter(maintenance_dsn, SERVER_LOG, path)


def _log_file(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT pg_current_logfile('stderr')").fetchone()
    candidates = [str(row[0])] if row and row[0] else []
    # Debian's pg_ctlcluster sends stderr to this file (no logging collector).
    version = conn.info.server_version // 10000
    candidates.append(f"/var/log/postgresql/postgresql-{version}-main.log")
    for path in candidates:
        try:
            conn.execute("SELECT size FROM pg_stat_file(%s)", [path]).fetchone()
            conn.execute("SELECT pg_read_file(%s, 0, 1)", [path]).fetchone()
        except psycopg.Error:
            continue
        return path
    return None


def database_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])
