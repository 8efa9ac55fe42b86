"""A role's or session's own timeouts against the loader's: the stricter one is in force, and an
error says which setting cancelled the statement."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from loader import queries, save_batch
from loader.datagen import make_batch
from loader.errors import TransientDatabaseError, translating

SEEN = """
CREATE TABLE seen (statement_timeout text, lock_timeout text);
CREATE FUNCTION record_timeouts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO seen VALUES (current_setting('statement_timeout'), current_setting('lock_timeout'));
    RETURN NEW;
END $$;
CREATE TRIGGER record_timeouts BEFORE INSERT ON batch_executions
    FOR EACH ROW EXECUTE FUNCTION record_timeouts();
"""


@pytest.mark.parametrize(
    ("own", "in_force"),
    [
        ("-c statement_timeout=5s -c lock_timeout=2s", ("5s", "2s")),
        ("-c statement_timeout=0 -c lock_timeout=0", ("1min", "90s")),
        ("-c statement_timeout=10min -c lock_timeout=1h", ("1min", "90s")),
        ("-c statement_timeout=5s -c lock_timeout=1h", ("5s", "90s")),
    ],
    ids=["stricter kept", "none: the loader's", "looser: the loader's", "each on its own"],
)
def test_a_save_keeps_a_stricter_timeout_of_the_session(
    dsn: str, db: psycopg.Connection[Any], own: str, in_force: tuple[str, str]
) -> None:
    db.execute(SEEN)  # records the settings in force when the call creates its batch

    with psycopg.connect(make_conninfo(dsn, options=own)) as conn:
        save_batch(conn, "b", make_batch(2))

    assert db.execute("SELECT * FROM seen").fetchall() == [in_force]


def test_a_role_timeout_is_kept_too(dsn: str, db: psycopg.Connection[Any]) -> None:
    db.execute(SEEN)
    name = str(db.info.dbname)
    db.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '1500ms'")

    with psycopg.connect(dsn) as conn:
        save_batch(conn, "b", make_batch(2))

    assert db.execute("SELECT lock_timeout FROM seen").fetchall() == [("1500ms",)]


def test_a_statement_cancelled_by_a_timeout_is_told_which_setting(dsn: str) -> None:
    with (
        psycopg.connect(make_conninfo(dsn, options="-c statement_timeout=1ms")) as conn,
        pytest.raises(TransientDatabaseError) as caught,
        translating("reading"),
    ):
        conn.execute("SELECT pg_sleep(0.2)")

    message = str(caught.value)
    assert "statement_timeout" in message
    assert "SHOW statement_timeout" in message


def test_the_task_log_keeps_a_stricter_timeout_too(dsn: str) -> None:
    with psycopg.connect(make_conninfo(dsn, options="-c statement_timeout=100ms -c lock_timeout=0")) as conn:
        conn.execute(queries.get("tasklog_timeouts"), {"timeout": "250ms"}, prepare=False)
        in_force = conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
        )
        assert in_force.fetchone() == ("100ms", "250ms")
