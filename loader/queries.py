"""The SQL the loader runs, read once at import from ``loader/sql/*.sql``.

Each statement sits under a ``-- name: <name>`` header, followed by a one-line
``--`` description. Names are unique across all files; an empty statement or a
repeated name fails the import with the file and line, so a broken edit cannot
ship silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import LiteralString

from loader.errors import LoaderError

_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$")


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    sql: LiteralString
    origin: str  # "file.sql:line", for error messages


def parse(text: str, filename: str) -> dict[str, Query]:
    """Split one .sql file into named queries."""
    found: dict[str, Query] = {}
    current: tuple[str, int] | None = None
    body: list[str] = []

    def flush() -> None:
        if current is None:
            return
        name, line = current
        origin = f"{filename}:{line}"
        lines = [ln for ln in body]
        description = ""
        while lines and lines[0].lstrip().startswith("--"):
            comment = lines.pop(0).lstrip()[2:].strip()
            description = description or comment
        sql = "\n".join(lines).strip()
        if not description:
            raise LoaderError(f"{origin}: query {name!r} has no one-line description after its header")
        if not sql:
            raise LoaderError(f"{origin}: query {name!r} is empty")
        if name in found:
            raise LoaderError(f"{origin}: query {name!r} is defined twice (first at {found[name].origin})")
        # The text comes from the package's own files, never from input.
        found[name] = Query(name, description, sql, origin)

    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(line.strip())
        if m:
            flush()
            current, body = (m.group("name"), lineno), []
        elif current is not None:
            body.append(line)
    flush()
    return found


def load_all() -> dict[str, Query]:
    queries: dict[str, Query] = {}
    sql_dir = resources.files("loader") / "sql"
    for entry in sorted(sql_dir.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, query in parse(entry.read_text(encoding="utf-8"), f"loader/sql/{entry.name}").items():
            if name in queries:
                raise LoaderError(
                    f"{query.origin}: query {name!r} is defined twice (first at {queries[name].origin})"
                )
            queries[name] = query
    return queries


QUERIES: dict[str, Query] = load_all()


def get(name: str) -> LiteralString:
    """The SQL text of a named query."""
    return QUERIES[name].sql
