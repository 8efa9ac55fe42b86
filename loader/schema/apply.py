"""Deploying schema.sql from Python (`loader schema apply`): the very file a DBA runs with psql."""

from __future__ import annotations

from importlib import resources

import psycopg

from loader.dsn import check_dsn
from loader.errors import LoaderError, translating


def schema_sql() -> str:
    """The text of schema.sql shipped with this package."""
    return (resources.files("loader") / "schema.sql").read_text(encoding="utf-8")


def apply_schema(conninfo: str) -> None:
    """Run schema.sql on the database at ``conninfo`` (all or nothing, safe to repeat)."""
    check_dsn(conninfo)
    with translating("applying schema.sql"):
        try:
            # autocommit: the file carries its own BEGIN/COMMIT; the simple query
            # protocol (no parameters) runs all its statements in one round trip.
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(schema_sql().encode("utf-8"))
        except psycopg.errors.RaiseException as exc:
            raise LoaderError(
                f"schema not applied: {exc.diag.message_primary} ({exc.diag.message_hint})"
            ) from exc
