"""PgBouncer in front of the test server, for the tests that run the loader through it.

Two session-scoped servers (loader.testing.pgbouncer_server), started on first
use and stopped at the end of the run:

- ``bouncer_transaction``: pool_mode = transaction, TRANSACTION_POOL server
  connections per database: fewer than the clients the tests open, so a
  client's successive transactions land on different server connections;
- ``bouncer_session``: pool_mode = session, SESSION_POOL server connections,
  reused (after PgBouncer's DISCARD ALL) by one short-lived client after another.

Each yields PgBouncer's DSN for the maintenance database; ``through(bouncer,
dsn)`` is a test database's DSN through it. Tests skip, saying why, only when
the pgbouncer binary is absent (.ci/run installs it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg.conninfo import conninfo_to_dict

from loader.testing import pgbouncer_binary, pgbouncer_server, with_dbname

#: Server connections per database in transaction pooling: less than the 8
#: clients the tests run at once.
TRANSACTION_POOL = 2
#: Server connections per database in session pooling: each client holds one
#: for its whole session, so as many as the clients open at once.
SESSION_POOL = 4


def through(bouncer: str, dsn: str) -> str:
    """The test database of ``dsn``, reached through the PgBouncer at ``bouncer``."""
    return with_dbname(bouncer, str(conninfo_to_dict(dsn)["dbname"]))


def admin(bouncer: str) -> str:
    """PgBouncer's admin console (SHOW POOLS, SHOW SERVERS, ...)."""
    return with_dbname(bouncer, "pgbouncer")


def _require_binary() -> None:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)")


@pytest.fixture(scope="session")
def bouncer_transaction(pg_server: str) -> Iterator[str]:
    _require_binary()
    with pgbouncer_server(pg_server, "transaction", TRANSACTION_POOL) as url:
        yield url


@pytest.fixture(scope="session")
def bouncer_session(pg_server: str) -> Iterator[str]:
    _require_binary()
    with pgbouncer_server(pg_server, "session", SESSION_POOL) as url:
        yield url
