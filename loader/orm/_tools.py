"""loader.orm's helpers for an application: engine URLs from a DSN, Alembic's include_object."""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from loader.dsn import check_dsn
from loader.errors import ConfigurationError
from loader.orm._base import Base

# libpq options asyncpg understands, by their libpq names; any other option of
# a DSN would be silently dropped, so it is refused instead.
_ASYNCPG_OPTIONS = frozenset({"host", "port", "user", "password", "dbname", "sslmode"})


def engine_url(dsn: str, driver: str = "psycopg") -> URL:
    """The SQLAlchemy URL of a libpq DSN (URI or key=value), for ``psycopg`` or ``asyncpg``.

    The loader and the application can then share one setting (e.g. LOADER_DSN):
    ``create_engine(engine_url(dsn))`` or ``create_async_engine(engine_url(dsn, "asyncpg"))``.
    """
    if driver not in {"psycopg", "asyncpg"}:
        raise ConfigurationError(f"unknown driver {driver!r}: use 'psycopg' or 'asyncpg'")
    check_dsn(dsn)
    params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    if driver == "asyncpg":
        unknown = sorted(set(params) - _ASYNCPG_OPTIONS)
        if unknown:
            raise ConfigurationError(f"asyncpg does not take these DSN options: {', '.join(unknown)}")
        if "sslmode" in params:
            # asyncpg spells libpq's sslmode "ssl", with the same values.
            params["ssl"] = params.pop("sslmode")
    port = params.pop("port", None)
    return URL.create(
        f"postgresql+{driver}",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=params.pop("host", None),
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query=params,
    )


#: The tables schema.sql creates: the loader's, whatever models an application maps onto them.
LOADER_TABLES = frozenset(Base.metadata.tables)


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's ``include_object`` hook for an application's own migration environment.

    False for the loader's tables and everything on them (columns, indexes, constraints),
    so ``alembic revision --autogenerate`` with the application's own models (docs/
    application.md, option b) neither drops ``load_rejects`` or the loader's indexes nor
    alters the loader's columns to what those models say: schema.sql and ``loader schema
    upgrade`` own them. The application's other tables are compared as usual.
    ``context.configure(..., target_metadata=AppBase.metadata, include_object=include_object)``

    It also hides the application's own later changes to the five tables it shares
    with the loader (a column it adds to ``ocr_executions``): include_except_loader_objects
    leaves out only what schema.sql declares on them.
    """
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    return table not in LOADER_TABLES


#: The application's tables, which schema.sql shares with it: the columns,
#: indexes and constraints schema.sql declares on them are the loader's; any
#: the application adds are its own.
SHARED_TABLES = frozenset(
    {"batch_executions", "chain_executions", "task_logs", "ocr_executions", "ocr_text_boxes"}
)


def _declared_by_schema(table: str, name: str | None, type_: str) -> bool:
    """Whether schema.sql declares this column, index or constraint of a shared table."""
    declared = Base.metadata.tables[table]
    if type_ == "column":
        return name is not None and name in declared.c
    if type_ == "index":
        return name in {index.name for index in declared.indexes}
    return name is not None and name in {constraint.name for constraint in declared.constraints}


def include_except_loader_objects(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's ``include_object`` hook leaving out only what schema.sql declares.

    ``include_object`` leaves out the five tables the application shares with the
    loader whole, so autogenerate also misses the application's own future changes to
    them (a column it adds to ``ocr_executions``, an index of its own on
    ``task_logs``). This one leaves out the loader's own tables (``load_rejects``,
    ``loader_schema_version``, ``loader_calls``, ...) and, on the five shared tables,
    only the columns, indexes and constraints schema.sql declares, and their table
    comments: anything else the application's models add to them is compared, and
    migrated, as usual. The models must agree with schema.sql on the rest (loader.orm's,
    or the application's own changed as docs/application.md, option b, says): the
    original models' unique indexes and foreign keys, which schema.sql replaced, would
    be proposed again.
    ``context.configure(..., include_object=include_except_loader_objects)``
    """
    table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
    if table not in LOADER_TABLES:
        return True
    if table not in SHARED_TABLES:
        return False
    if type_ == "table":
        if compare_to is not None and getattr(obj, "comment", None) is None:
            # The table's comment is schema.sql's: unless the models set one of their own,
            # the deployed table is compared as if it had none (Alembic's reflected copy only).
            compare_to.comment = None
        return True
    return not _declared_by_schema(table, name, type_)
