"""Schema upgrades: numbered migration files, each one transaction (`loader schema upgrade`).

``loader/schema/migrations/NNNN_name.sql`` takes a database from schema version NNNN-1
to NNNN. Each file is self-contained plain SQL, like schema.sql: it opens its own
transaction, takes the deployment lock, refuses to run on any other version,
changes the schema and records its version, so a DBA can also apply it with
``psql -v ON_ERROR_STOP=1 -f``. Its first line reads ``-- migration NNNN: what it does``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import psycopg

from loader.connection import SCHEMA_VERSION
from loader.dsn import check_dsn
from loader.errors import MigrationError, translate, translating

_FILENAME = re.compile(r"^(?P<version>\d{4})_(?P<slug>[a-z0-9_]+)\.sql$")
_HEADER = re.compile(r"^--\s*migration\s+(?P<version>\d{4})\s*:\s*(?P<description>\S.*)$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. 0002_unfinished_batches_index.sql
    description: str
    sql: str


def _parse(name: str, text: str) -> Migration:
    m = _FILENAME.match(name)
    if not m:
        raise MigrationError(f"migration file {name!r} is not named NNNN_lowercase_words.sql")
    first = text.splitlines()[0] if text else ""
    h = _HEADER.match(first)
    if not h or h.group("version") != m.group("version"):
        raise MigrationError(
            f"migration {name}: its first line must read '-- migration {m.group('version')}: <description>'"
        )
    return Migration(int(m.group("version")), name, h.group("description").strip(), text)


def load(directory: Traversable | Path | None = None) -> list[Migration]:
    """The migrations shipped with the package (or found in ``directory``), in version order.

    Versions must run 2, 3, ... without gaps: version 1 is schema.sql itself.
    """
    folder = directory if directory is not None else resources.files("loader.schema") / "migrations"
    found = sorted(
        (_parse(entry.name, entry.read_text(encoding="utf-8")) for entry in _sql_files(folder)),
        key=lambda mig: mig.version,
    )
    for expected, mig in enumerate(found, start=2):
        if mig.version != expected:
            raise MigrationError(f"migration {mig.name}: expected version {expected} (no gaps, no repeats)")
    return found


def _sql_files(folder: Traversable | Path) -> Iterable[Traversable | Path]:
    if not folder.is_dir():
        return []
    return [entry for entry in folder.iterdir() if entry.name.endswith(".sql")]


def deployed_version(conn: psycopg.Connection[Any]) -> int | None:
    """max(version) of loader_schema_version, or None when the schema is not deployed."""
    with translating("reading the schema version"):
        try:
            row = conn.execute("SELECT max(version) FROM loader_schema_version").fetchone()
        except psycopg.errors.UndefinedTable:
            if not conn.autocommit:
                conn.rollback()
            return None
    return row[0] if row else None


def pending(current: int, migrations: Sequence[Migration], target: int = SCHEMA_VERSION) -> list[Migration]:
    """The migrations that take ``current`` to ``target``, in order."""
    return [mig for mig in migrations if current < mig.version <= target]


def upgrade(
    conninfo: str,
    *,
    target: int = SCHEMA_VERSION,
    migrations: Sequence[Migration] | None = None,
) -> tuple[int, list[Migration]]:
    """Apply the migrations a database needs to reach ``target``; returns (version found, applied).

    Each migration is one transaction: a failure rolls that migration back and
    leaves the database at the version before it (earlier ones stay applied).
    Safe to run concurrently: the second runner waits for the deployment lock,
    then finds the version already there.
    """
    steps = list(migrations) if migrations is not None else load()
    available = max([1, *(mig.version for mig in steps)])
    if target > available:
        raise MigrationError(
            f"no migration reaches schema version {target} (the newest shipped is {available})"
        )
    check_dsn(conninfo)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            found = deployed_version(conn)
            if found is None:
                raise MigrationError(
                    "this database has no loader schema to upgrade; deploy it with `loader schema apply`"
                )
            if found > target:
                raise MigrationError(
                    f"this database holds loader schema version {found}, newer than version {target} "
                    "of this loader; use a loader release that knows it"
                )
            applied: list[Migration] = []
            for mig in pending(found, steps, target):
                try:
                    # The simple query protocol runs the file, BEGIN to COMMIT, in one round trip.
                    conn.execute(mig.sql.encode("utf-8"))
                except psycopg.errors.RaiseException as exc:
                    # The file's own BEGIN left the session in the aborted transaction.
                    conn.execute("ROLLBACK")
                    # Its version guard refused: another runner may have applied it meanwhile.
                    now = deployed_version(conn)
                    if now is not None and now >= mig.version:
                        continue
                    raise MigrationError(
                        f"migration {mig.name} refused to run: {exc.diag.message_primary} "
                        f"({exc.diag.message_hint}); nothing of it was applied"
                    ) from exc
                except psycopg.Error as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise MigrationError(
                        f"migration {mig.name} failed and was rolled back (the database stays at "
                        f"version {applied[-1].version if applied else found}): {first}"
                    ) from exc
                applied.append(mig)
    except psycopg.OperationalError as exc:
        raise translate(exc, "connecting to upgrade the schema") from exc
    return found, applied
