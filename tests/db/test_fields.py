"""The DDL agrees with loader/fields.py: every stored field of an OCR result has its column,
type, nullability, comment and CHECK in schema.sql, the database built from it and loader.orm,
its place in result history, and loader_writer may update it where a replace does."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import CheckConstraint

from loader.fields import REPLACED, STORED, Declared
from loader.orm import OCRExecution, OCRResultVersion
from loader.schema.apply import schema_sql

_IDS = [f.name for f in STORED]


def _column(db: psycopg.Connection[Any], table: str, name: str) -> tuple[str, bool, str | None] | None:
    """The column's type, whether it is NOT NULL, and its comment (None: no such column)."""
    row = db.execute(
        "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull, col_description(a.attrelid, a.attnum)"
        " FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attname = %s AND NOT a.attisdropped",
        [table, name],
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _checks_on(db: psycopg.Connection[Any], table: str, name: str) -> set[str]:
    """The CHECK constraints of ``table`` on this one column, as PostgreSQL prints them."""
    rows = db.execute(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
        " WHERE c.conrelid = %s::regclass AND c.contype = 'c' AND a.attname = %s"
        " AND cardinality(c.conkey) = 1",
        [table, name],
    ).fetchall()
    return {r[0] for r in rows}


def _declared_checks(db: psycopg.Connection[Any], field: Declared) -> set[str]:
    """The declared CHECK as PostgreSQL prints it, from a scratch table (so both read alike)."""
    if field.check is None:
        return set()
    with db.transaction(force_rollback=True):
        db.execute(
            sql.SQL("CREATE TEMP TABLE declared ({} {} CHECK ({}))").format(
                sql.Identifier(field.name), sql.SQL(field.column.sql_type), sql.SQL(field.check)
            )
        )
        return _checks_on(db, "declared", field.name)


@pytest.mark.parametrize("field", STORED, ids=_IDS)
def test_each_field_is_the_declared_column_of_ocr_executions(
    db: psycopg.Connection[Any], field: Declared
) -> None:
    column = _column(db, "ocr_executions", field.name)
    assert column is not None, f"ocr_executions has no column {field.name}"
    sql_type, not_null, comment = column
    assert sql_type == field.column.sql_type
    assert not_null == (not field.nullable)
    if field.column.comment is not None:
        assert comment == field.column.comment
    assert _checks_on(db, "ocr_executions", field.name) == _declared_checks(db, field)


@pytest.mark.parametrize("field", REPLACED, ids=[f.name for f in REPLACED])
def test_result_history_keeps_each_replaced_field_and_a_replace_may_write_it(
    db: psycopg.Connection[Any], field: Declared
) -> None:
    column = _column(db, "ocr_result_history", field.name)
    assert column is not None, f"ocr_result_history has no column {field.name}"
    assert column[:2] == (field.column.sql_type, not field.nullable)
    # A kept result was valid when stored: history holds it without checking it again.
    assert _checks_on(db, "ocr_result_history", field.name) == set()
    (may,) = db.execute(
        "SELECT has_column_privilege('loader_writer', 'ocr_executions', %s, 'UPDATE')", [field.name]
    ).fetchone() or (None,)
    assert may, f"loader_writer may not update ocr_executions.{field.name}, which a replace writes"


@pytest.mark.parametrize("field", STORED, ids=_IDS)
def test_schema_sql_writes_each_declared_check_where_it_creates_the_column(field: Declared) -> None:
    lines = re.findall(rf"^\s+(?:ADD COLUMN IF NOT EXISTS )?{field.name}\s+[^\n]*$", _ocr_executions(), re.M)
    assert len(lines) == 1, f"schema.sql creates ocr_executions.{field.name} {len(lines)} times"
    written = re.findall(r"CHECK \((.*)\)", lines[0])
    assert written == ([field.check] if field.check else [])


@pytest.mark.parametrize("field", STORED, ids=_IDS)
def test_the_orm_models_each_field_as_declared(field: Declared) -> None:
    column = OCRExecution.__table__.c[field.name]
    assert column.nullable == field.nullable
    if field.column.comment is not None:
        assert column.comment == field.column.comment
    # A column's own CHECK, named as PostgreSQL names it (schema.sql's are unnamed).
    checks = {
        str(c.sqltext)
        for c in OCRExecution.__table__.constraints
        if isinstance(c, CheckConstraint) and c.name == f"ocr_executions_{field.name}_check"
    }
    assert checks == ({field.check} if field.check else set())
    if field.name in {f.name for f in REPLACED}:
        assert OCRResultVersion.__table__.c[field.name].nullable == field.nullable


def _ocr_executions() -> str:
    """schema.sql's CREATE TABLE ocr_executions and its ALTER TABLEs (columns of later versions)."""
    text = schema_sql()
    start = text.index("CREATE TABLE IF NOT EXISTS ocr_executions (")
    parts = [text[start : text.index("\n);", start)]]
    parts += re.findall(r"^ALTER TABLE ocr_executions\b.*?;", text, re.M | re.S)
    return "\n".join(parts)
