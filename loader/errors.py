"""The loader's exceptions, and the one place psycopg errors are translated into them.

Every error the loader raises on purpose is a LoaderError:

    LoaderError
    ├── ConfigurationError          called or configured wrongly; retrying will not help
    │   ├── SchemaVersionError      the database holds another schema version
    │   ├── TransactionStateError   a connection handed in inside a transaction
    │   ├── BatchConflictError      the call contradicts what the batch already holds
    │   │   └── PositionBeyondTotalError  an input past the batch's declared total
    │   └── BatchReferenceError     a Celery batch file the worker cannot or may not read
    ├── DatabaseError               the database failed; nothing of the call was kept
    │   └── TransientDatabaseError  ... and retrying may succeed
    ├── BatchNotFoundError          no batch with that id
    ├── InputFileError              an input file that cannot be read as JSON lines
    ├── MigrationError              migrations that cannot be applied
    ├── SchemaCheckError            a schema comparison that cannot be made
    ├── AdoptError                  `schema adopt` refused or failed; nothing changed
    │   ├── UnknownShapeError       tables of a shape adopt does not know
    │   └── DirtyRowsError          old rows that break the loader's constraints
    └── CliError                    a command that cannot go on (one line, an exit status)
        └── Interrupted             a load stopped by a second Ctrl-C

    DataRefused                     internal to save_batch: data the database refused,
                                    stored again by isolating it; never reaches a caller

psycopg errors become DatabaseError through ``translate`` / ``translating``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo


class BrokenRuleLike(Protocol):
    """What DirtyRowsError holds of a broken rule (loader.schema.adopt.BrokenRule)."""

    count: int

    def line(self) -> str: ...


class LoaderError(Exception):
    """Base of every error the loader raises on purpose."""


class ConfigurationError(LoaderError):
    """The loader was called wrongly or configured wrongly; retrying will not help."""


class SchemaVersionError(ConfigurationError):
    """The database holds another schema version than this loader was built for."""

    def __init__(self, expected: int, found: int | None) -> None:
        self.expected = expected
        self.found = found
        if found is None:
            msg = (
                f"the database has no loader schema (expected version {expected}); "
                "deploy it with `psql -v ON_ERROR_STOP=1 -f schema.sql` or `loader schema apply`"
            )
        elif found < expected:
            msg = (
                f"the database holds loader schema version {found} but this loader needs "
                f"version {expected}; upgrade it in place with `loader schema upgrade`"
            )
        else:
            msg = (
                f"the database holds loader schema version {found} but this loader needs "
                f"version {expected}; use the loader release built for version {found}"
            )
        super().__init__(msg)


class TransactionStateError(ConfigurationError):
    """A connection was handed in while inside a transaction."""


class BatchConflictError(ConfigurationError):
    """The call contradicts what the database already holds for the batch."""


class PositionConflictError(BatchConflictError):
    """Inputs of a call claim positions of the batch that already hold other inputs.

    Nothing of the call was kept. Positions are an input's identity in its batch:
    a caller numbering every call from 0 (instead of by each input's place in
    the batch) sends this. ``positions`` lists the conflicting ones.
    """

    def __init__(self, message: str, positions: list[int]) -> None:
        super().__init__(message)
        self.positions = positions


class PositionBeyondTotalError(BatchConflictError):
    """An input of the call sits at a position at or past the batch's declared total.

    Positions are 0 .. total_images - 1: the whole call is refused, nothing kept.
    ``position`` is the first such position, ``total`` the declared total.
    """

    def __init__(self, message: str, position: int, total: int) -> None:
        super().__init__(message)
        self.position = position
        self.total = total


class BatchReferenceError(ConfigurationError):
    """A batch file reference that the worker cannot or may not read."""


class BatchNotFoundError(LoaderError):
    """No batch with that batch_id exists; ``batch_id`` is the one asked for."""

    def __init__(self, message: str, batch_id: str | None = None) -> None:
        super().__init__(message)
        self.batch_id = batch_id


class InputFileError(LoaderError):
    """An input file cannot be read as JSONL (binary, too long a line, corrupt gzip, ...)."""


class MigrationError(LoaderError):
    """The migrations cannot be applied (broken file set, or a migration failed and was rolled back)."""


class SchemaCheckError(LoaderError):
    """The comparison could not be made (no deployed schema, missing privileges, ...)."""


class AdoptError(LoaderError):
    """Adoption refused or failed; nothing was changed."""


class UnknownShapeError(AdoptError):
    """The tables are not the shape adopt knows; ``differences`` says how, one line each."""

    def __init__(self, differences: list[str]) -> None:
        self.differences = differences
        super().__init__(
            f"not a database adopt knows ({len(differences)} difference(s)); nothing changed: "
            + "; ".join(differences)
        )


class DirtyRowsError(AdoptError):
    """Old rows break constraints of schema.sql; ``broken`` says which, per rule."""

    def __init__(self, broken: Sequence[BrokenRuleLike]) -> None:
        self.broken = broken
        total = sum(rule.count for rule in broken)
        super().__init__(
            f"{total} old row(s) break {len(broken)} constraint(s) of the loader schema; nothing changed. "
            "Fix them, or adopt with --set-aside to move them to loader_adopt_set_aside"
        )


class CliError(LoaderError):
    """A command cannot go on: one line on stderr and ``exit_code``.

    Not a click exception: the command group prints every LoaderError the same
    way, so library code below the CLI never needs click.
    """

    exit_code: int = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Interrupted(CliError):
    """Stopped by a second Ctrl-C in the middle of a chunk (which was rolled back).

    ``exit_code`` is 128 + the signal number, as a shell reports a process stopped by it.
    """

    exit_code = 130


class DataRefused(Exception):
    """The fast path's COPY or merge refused some input's data; save runs the call again,
    isolating it (loader/save/isolate.py).

    Internal: save_batch catches it and never lets it out, so it is no LoaderError.
    ``loader.save.isolate.DataRefused`` names it too.
    """

    def __init__(self, cause: BaseException, statements: int) -> None:
        lines = str(cause).strip().splitlines()
        super().__init__(f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": "))
        self.cause = cause
        #: Statements the refused transaction sent, its ROLLBACK included.
        self.statements = statements


class DatabaseError(LoaderError):
    """The database failed (connection lost, server error). Nothing of the call was kept."""

    #: True when retrying the same call may succeed (lost connection, deadlock, ...).
    transient: bool = False


class TransientDatabaseError(DatabaseError):
    """A failure worth retrying: connection lost, serialization failure, deadlock, shutdown."""

    transient = True


# SQLSTATE classes/codes after which the same call may well succeed.
_TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown (pg_terminate_backend, server restart)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (server starting up)
        "53300",  # too_many_connections
    }
)
_TRANSIENT_CLASSES = ("08",)  # connection exceptions
# The setting behind each timeout's SQLSTATE (the server's message names it, spaced).
_TIMEOUT_SETTINGS = {"57014": "statement_timeout", "55P03": "lock_timeout"}

# Characters of an id or a path a message quotes: enough to recognise it, never a screenful.
QUOTED_CHARS = 80

# What a terminal could act on or hide: C0/C1 controls and DEL (Cc: ESC starts a
# sequence that moves the cursor or retitles the window, a newline breaks a line),
# format characters (Cf: bidirectional overrides reorder what is shown), line and
# paragraph separators, lone surrogates. Each is written as an escape.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    code = ord(char)
    return _ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(value: str, *, keep: str = "") -> str:
    """``value`` with every character a terminal could act on written as an escape
    (``\\x1b``, ``\\n``, ``\\u202e``); characters in ``keep`` (a message's own line
    breaks) stay. The one escaping rule of every message, prompt and printed value."""
    if value.isprintable():
        return value  # the common case, in C
    return "".join(
        _escape_char(c) if c not in keep and unicodedata.category(c) in _UNPRINTABLE_CATEGORIES else c
        for c in value
    )


def quoted(value: str) -> str:
    """``value`` as a message quotes it: repr (every unprintable character escaped), cut
    to QUOTED_CHARS characters with an ellipsis and the full length when longer."""
    if len(value) <= QUOTED_CHARS:
        return repr(value)
    return f"{value[:QUOTED_CHARS]!r}… ({len(value):,} characters)"


# Prepared statements that vanish or collide between transactions: what a
# transaction pooler that does not track them (PgBouncer < 1.21, or
# max_prepared_statements = 0) does to psycopg's automatic preparing.
_POOLER_PREPARED_SQLSTATES = frozenset(
    {
        "42P05",  # duplicate_prepared_statement: "_pg3_0" already exists
        "26000",  # invalid_sql_statement_name: "_pg3_0" does not exist
    }
)
_POOLER_ADVICE = (
    "a prepared statement was missing or another session's, as behind a transaction pooler such as "
    "PgBouncer; nothing of this call was kept. Leave LOADER_PREPARE_THRESHOLD unset "
    "(make_pool(prepare_threshold=None)), or enable max_prepared_statements (PgBouncer >= 1.21)"
)

# A password in text that quotes a DSN among other words (a server's or libpq's
# message): password=value (an unquoted value ends at an unescaped space: libpq
# reads ``\\ `` as a space of the value), password='quoted value', and the
# password of a URI's user info.
_PASSWORD_IN_TEXT = re.compile(
    r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:\\.|[^\s\\])+\\?)|(://[^:/@\s]*:)([^@\s]*)(@)"
)
MASK = "***"


def _redact_text(text: str) -> str:
    def _sub(m: re.Match[str]) -> str:
        if m.group(1):
            return f"{m.group(1)}{MASK}"
        return f"{m.group(3)}{MASK}{m.group(5)}"

    return _PASSWORD_IN_TEXT.sub(_sub, text)


def redact_dsn(text: str) -> str:
    """Hide passwords in a DSN, or in anything that may quote one.

    A whole DSN (key=value or URI) is read by libpq's own parser and written
    back as key=value with the password masked: what libpq would use is what is
    hidden, however it was escaped or encoded (``password=a\\ b``, ``%20``,
    ``?password=``). Other text (a message quoting a DSN) has every
    password-looking value masked.
    """
    if "=" in text or "://" in text:
        try:
            params = conninfo_to_dict(text)
        except (psycopg.Error, ValueError, TypeError):
            params = None
        if params is not None:
            if "password" in params:
                params["password"] = MASK
            return make_conninfo("", **params)
    return _redact_text(text)


def is_transient(exc: BaseException) -> bool:
    """True for database failures after which retrying the same call may succeed."""
    if isinstance(exc, DatabaseError):
        return exc.transient
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        sqlstate = getattr(exc, "sqlstate", None)
        return sqlstate is None or sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(_TRANSIENT_CLASSES)
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate or ""
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(_TRANSIENT_CLASSES)
    return False


def translate(
    exc: psycopg.Error, doing: str, lost: str | None = None, denied: str | None = None
) -> DatabaseError:
    """Wrap a psycopg error raised while ``doing`` something; use with ``raise ... from exc``.

    ``lost``: the advice when the connection went away, for callers that write nothing
    (the default speaks of a call that may have committed). ``denied``: what the
    role lacks, when the server refused a privilege (SQLSTATE 42501).
    """
    kind = TransientDatabaseError if is_transient(exc) else DatabaseError
    sqlstate = f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = printable(_redact_text(first))
    if denied is not None and isinstance(exc, pg_errors.InsufficientPrivilege):
        return kind(f"{doing} refused: {denied} (the server said: {detail})")
    if exc.sqlstate is None or exc.sqlstate.startswith("08"):
        # The connection itself went away: if that happened while COMMIT was in
        # flight, the server may have committed without telling us.
        advice = lost or (
            "the call was rolled back, unless the connection dropped during COMMIT; "
            "retrying is safe either way, since a replay changes nothing"
        )
    elif kind.transient:
        advice = "nothing of this call was kept; retry it"
    else:
        advice = "nothing of this call was kept; check the server log and the input"
    if isinstance(exc, pg_errors.UndefinedTable):
        advice = "is the loader schema deployed? run `loader schema apply`"
    setting = _TIMEOUT_SETTINGS.get(exc.sqlstate or "")
    if setting and setting.replace("_", " ") in detail:
        advice = (
            f"{setting} cancelled it: the loader's own (Settings.{setting}), or the role's or "
            f"session's where stricter, which the loader keeps (`SHOW {setting}` as this role); "
            "nothing of this call was kept; retry it if the server was only busy"
        )
    elif exc.sqlstate in _POOLER_PREPARED_SQLSTATES:
        advice = _POOLER_ADVICE
    return kind(f"{doing} failed{sqlstate}: {detail} ({advice})")


@contextmanager
def translating(doing: str, lost: str | None = None, denied: str | None = None) -> Iterator[None]:
    """Raise any psycopg error of the block as the DatabaseError ``translate`` makes of it."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, doing, lost, denied) from exc
