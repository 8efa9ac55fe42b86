"""Log lines of a command on stderr: key=value text or JSON objects, ``extra=`` fields rendered."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from loader.errors import printable, redact_dsn

#: The plain-mode progress display of `loader load` (shown without --verbose).
progress_log = logging.getLogger("loader.cli.progress")

_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS and not k.startswith("_")}


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...``: greppable, one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        text += "".join(f" {key}={_kv(value)}" for key, value in _fields(record).items())
        # One line whatever a value holds (a batch id with ESC or a newline): escaped.
        return redact_dsn(printable(text))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        return redact_dsn(json.dumps(data, ensure_ascii=False, default=str))


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is now (the progress bar and test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def logging_to_stderr(verbose: bool, fmt: str) -> Iterator[None]:
    """Route the loader's log records to stderr for one command; restore the loggers after."""
    root, progress = logging.getLogger("loader"), progress_log
    saved = (root.level, root.propagate, progress.level)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    # Progress lines are the plain-mode display, shown without --verbose too.
    progress.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
        progress.setLevel(saved[2])
