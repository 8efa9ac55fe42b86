"""The named-SQL loader refuses broken files with the file and line."""

from __future__ import annotations

import pytest
from psycopg import sql

from loader import queries
from loader.copy import STAGE_IMAGES, staging_names
from loader.errors import LoaderError


def test_every_shipped_query_has_a_description_and_sql() -> None:
    assert {"lock_batch", "merge", "delete_batch", "schema_version"} <= set(queries.QUERIES)
    for query in queries.QUERIES.values():
        assert query.description and query.sql.strip()
        assert query.origin.startswith("loader/sql/")


def test_empty_query_fails_naming_file_and_line() -> None:
    text = "-- name: first\n-- a description\nSELECT 1;\n\n-- name: empty\n-- nothing follows\n"
    with pytest.raises(LoaderError, match=r"x\.sql:5: query 'empty' is empty"):
        queries.parse(text, "x.sql")


def test_duplicate_name_fails_naming_both_places() -> None:
    text = "-- name: twice\n-- one\nSELECT 1;\n-- name: twice\n-- two\nSELECT 2;\n"
    with pytest.raises(LoaderError, match=r"x\.sql:4: query 'twice' is defined twice \(first at x\.sql:1\)"):
        queries.parse(text, "x.sql")


def test_query_without_description_fails() -> None:
    with pytest.raises(LoaderError, match="no one-line description"):
        queries.parse("-- name: bare\nSELECT 1;\n", "x.sql")


def test_the_merge_names_its_staging_table_within_what_pg_stat_activity_shows() -> None:
    # pg_stat_activity shows a query's first track_activity_query_size bytes (1024 by
    # default); operators and the fault tests find a running merge by this FROM.
    merge = sql.SQL(queries.get("merge")).format(**staging_names()).as_string(None)
    mark = f'FROM "{STAGE_IMAGES.table}"'
    assert mark in merge
    assert len(merge[: merge.index(mark) + len(mark)].encode()) <= 1024
