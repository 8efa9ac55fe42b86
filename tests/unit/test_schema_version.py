"""The schema version is written once: the newest migration's number, which schema.sql builds."""

from __future__ import annotations

import re

from loader.connection import SCHEMA_VERSION
from loader.schema.apply import schema_sql
from loader.schema.migrate import load


def test_the_loaders_version_is_its_newest_migrations() -> None:
    assert SCHEMA_VERSION == load()[-1].version == len(load()) + 1


def test_schema_sql_sets_its_version_once_and_records_every_version_up_to_it() -> None:
    text = schema_sql()
    assert re.findall(r"^SET LOCAL loader\.schema_version = (\d+);$", text, re.M) == [str(SCHEMA_VERSION)]
    recorded = re.search(
        r"INSERT INTO loader_schema_version \(version, description\)\nVALUES (.*?)\nON CONFLICT", text, re.S
    )
    assert recorded is not None
    versions = [
        int(v) for v in re.findall(r"^\s*(?:VALUES )?\((\d+), '", "VALUES " + recorded.group(1), re.M)
    ]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
