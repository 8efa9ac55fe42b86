"""What `loader schema adopt` recognises: the shape SQLAlchemy's ``create_all`` gives the
application's original models (:data:`EXPECTED`), and how a database differs from it.

Anything else is refused with one line per difference, before anything changes
(loader/schema/adopt.py runs the conversion).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from loader import queries
from loader.errors import AdoptError

TABLES = ("batch_executions", "chain_executions", "task_logs", "ocr_executions", "ocr_text_boxes")
PROCESS_LABELS = ("PENDING", "STARTED", "SUCCESS", "RUNNING", "FAILURE", "RETRY", "REVOKED")
OCR_LABELS = ("SUCCESS", "FAILED")


@dataclass(frozen=True)
class Kind:
    """A family of column types the adoption converts from, and what it says when another appears."""

    name: str
    accepts: Callable[[str], bool]


def _is_string(t: str) -> bool:
    return t == "text" or t.startswith("character varying")


INTEGER = Kind("integer", lambda t: t in ("integer", "bigint", "smallint"))
STRING = Kind("varchar or text", _is_string)
TIMESTAMP = Kind("timestamp", lambda t: t in ("timestamp without time zone", "timestamp with time zone"))
FLOAT = Kind("double precision or real", lambda t: t in ("double precision", "real"))
JSON = Kind("json or jsonb", lambda t: t in ("json", "jsonb"))
PROCESS = Kind("enum processstatus or varchar", lambda t: t == "processstatus" or _is_string(t))
OCR = Kind("enum ocrstatus or varchar", lambda t: t == "ocrstatus" or _is_string(t))

STAMPS = {"created_at": TIMESTAMP, "updated_at": TIMESTAMP}

#: The original models as create_all makes them: table -> column -> accepted types.
EXPECTED: dict[str, dict[str, Kind]] = {
    "batch_executions": {
        "id": INTEGER,
        "batch_id": STRING,
        "status": PROCESS,
        "total_images": INTEGER,
        "completed_images": INTEGER,
        "failed_images": INTEGER,
        **STAMPS,
    },
    "chain_executions": {
        "id": INTEGER,
        "chain_id": STRING,
        "batch_id": STRING,
        "status": PROCESS,
        "total_tasks": INTEGER,
        "completed_tasks": INTEGER,
        "failed_tasks": INTEGER,
        **STAMPS,
    },
    "task_logs": {
        "id": INTEGER,
        "task_id": STRING,
        "task_name": STRING,
        "chain_execution_id": INTEGER,
        "status": PROCESS,
        **STAMPS,
    },
    "ocr_executions": {
        "id": INTEGER,
        "image_path": STRING,
        "public_path": STRING,
        "chain_id": STRING,
        "status": OCR,
        **STAMPS,
    },
    "ocr_text_boxes": {
        "id": INTEGER,
        "ocr_execution_id": INTEGER,
        "text": STRING,
        "confidence": FLOAT,
        "bbox": JSON,
        **STAMPS,
    },
}
OPTIONAL_COLUMNS = {("task_logs", "task_name")}
UNIQUE_COLUMNS = {
    ("batch_executions", "batch_id"),
    ("chain_executions", "chain_id"),
    ("task_logs", "task_id"),
    ("ocr_executions", "image_path"),
    ("ocr_executions", "public_path"),
}
FOREIGN_KEYS = {
    ("chain_executions", "batch_id", "batch_executions", "batch_id"),
    ("ocr_executions", "chain_id", "chain_executions", "chain_id"),
    ("task_logs", "chain_execution_id", "chain_executions", "id"),
    ("ocr_text_boxes", "ocr_execution_id", "ocr_executions", "id"),
}


@dataclass
class Inspection:
    """What the catalog says about the current schema."""

    namespace: str
    version: int | None  # loader_schema_version's max, None when absent
    tables: dict[str, str]  # application table -> owner
    columns: dict[str, dict[str, dict[str, Any]]]  # table -> column -> catalog row
    differences: list[str]


def fetch(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None) -> list[Any]:
    """The rows of a named query of loader/sql/adopt.sql, as dicts."""
    # No parameters, no placeholder parsing: a % in the text then reaches the server as written.
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries.get(name), params).fetchall()


def _loader_version(conn: psycopg.Connection[Any]) -> int | None:
    if not fetch(conn, "adopt_loader_version_table")[0]["present"]:
        return None
    return int(fetch(conn, "adopt_loader_version")[0]["version"])


def _column_differences(table: str, columns: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    expected = EXPECTED[table]
    for name, kind in expected.items():
        col = columns.get(name)
        if col is None:
            if (table, name) not in OPTIONAL_COLUMNS:
                out.append(f"missing column {table}.{name} ({kind.name})")
            continue
        if not kind.accepts(col["type"]):
            out.append(f"column {table}.{name} is {col['type']}, expected {kind.name}")
        elif col["is_enum"]:
            labels = OCR_LABELS if kind is OCR else PROCESS_LABELS
            unknown = [label for label in col["labels"] if label not in labels]
            if unknown:
                out.append(f"enum {col['type']} of {table}.{name} has unknown labels {', '.join(unknown)}")
    for name, col in columns.items():
        if name not in expected:
            what = "NOT NULL without default" if col["not_null"] and not col["has_default"] else "its values"
            out.append(
                f"unexpected column {table}.{name} ({col['type']}): the loader schema has no place for {what}"
            )
    return out


def _key_differences(conn: psycopg.Connection[Any], present: set[str]) -> list[str]:
    params = {"tables": list(TABLES)}
    out: list[str] = []
    keys = {(r["table_name"], r["column_name"]) for r in fetch(conn, "adopt_primary_keys", params)}
    out += [f"{t}.id is not its primary key" for t in TABLES if t in present and (t, "id") not in keys]
    uniques = {(r["table_name"], r["column_name"]) for r in fetch(conn, "adopt_unique_columns", params)}
    out += [
        f"{t}.{c} is not unique (neither a UNIQUE constraint nor a unique index)"
        for t, c in sorted(UNIQUE_COLUMNS)
        if t in present and (t, c) not in uniques
    ]
    found: set[tuple[str, str, str, str]] = set()
    for fk in fetch(conn, "adopt_foreign_keys", params):
        key = (fk["table_name"], fk["column_name"], fk["ref_table"], fk["ref_column"])
        if not fk["from_app"]:
            out.append(
                f"foreign key {fk['name']} of {fk['table_name']}.{fk['column_name']} "
                f"(not an application table) references {fk['ref_table']}.{fk['ref_column']}"
            )
        elif key not in FOREIGN_KEYS:
            out.append(f"unexpected foreign key {fk['name']}: {key[0]}.{key[1]} -> {key[2]}.{key[3]}")
        found.add(key)
    out += [
        f"missing foreign key {t}.{c} -> {rt}.{rc}"
        for t, c, rt, rc in sorted(FOREIGN_KEYS - found)
        if t in present and rt in present
    ]
    out += [
        f"view {r['view_name']} reads {r['table_name']} (drop it before adopting, recreate it after)"
        for r in fetch(conn, "adopt_dependent_views", params)
    ]
    out += [
        f"trigger {r['name']} on {r['table_name']}: the loader schema has no place for it"
        for r in fetch(conn, "adopt_user_triggers", params)
    ]
    return out


def inspect(conn: psycopg.Connection[Any]) -> Inspection:
    """The shape of the current schema (the first of the search_path)."""
    namespace = fetch(conn, "adopt_session")[0]["namespace"]
    if namespace is None:
        raise AdoptError("no current schema (the search_path names no existing schema)")
    params = {"tables": list(TABLES)}
    tables = {r["name"]: r["owner"] for r in fetch(conn, "adopt_tables", params)}
    columns: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for col in fetch(conn, "adopt_columns", params):
        columns[col["table_name"]][col["name"]] = col
    inspection = Inspection(str(namespace), _loader_version(conn), tables, dict(columns), [])
    if inspection.version is not None:
        return inspection
    diffs = [f"missing table {t}" for t in TABLES if t not in tables]
    for table in TABLES:
        if table in tables:
            diffs += _column_differences(table, columns[table])
    diffs += _key_differences(conn, set(tables))
    inspection.differences = diffs
    return inspection
