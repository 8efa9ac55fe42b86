"""Batch payloads too big for a message: JSON-lines files, written by the caller and
streamed by the worker in chunks.

A file holds one input per line (JSONL, gzip-compressed or not; the gzip magic
bytes decide, not the name). The worker loads it with the chunk engine
(loader.save.chunks, the same as `loader load`): ``chunk_images`` lines per
transaction, positions = 0-based line numbers, so a rejected line keeps its
exact bytes and its line number. Each chunk is its own transaction and
idempotent, so a task rerun after a crash finds the chunks already stored
unchanged and completes the rest.

References are ``file://`` URLs or absolute paths, and must lie inside the
worker's spool directory (LOADER_SPOOL_DIR): a message must not be able to make
the worker read, and store into the database, any file it can open. (``s3://``
references are fetched into such a file first: loader.celery.objectstore.)
"""

from __future__ import annotations

import gzip
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from psycopg_pool import ConnectionPool

from loader.errors import BatchNotFoundError, BatchReferenceError, InputFileError
from loader.models import LoadReport, OCRResult
from loader.progress.metrics import record_save
from loader.progress.read import get_progress
from loader.save import jsonl
from loader.save.call import save_batch
from loader.save.chunks import load_chunks
from loader.save.inputs import Input
from loader.save.pipeline import Judged, save_judged
from loader.settings import Limits, Settings

__all__ = ["BatchReferenceError", "encode_line", "load_file", "read_lines", "resolve_reference"]

# gzip level 1 is ~5x smaller than the raw JSON at a fraction of level 9's cost.
_GZIP_LEVEL = 1


def encode_line(item: Input) -> bytes:
    """One input as a JSON line (without its newline).

    Raw lines are kept byte for byte; only a line with a newline inside it,
    which JSONL cannot hold, is re-encoded (compactly if it is JSON, else as a
    JSON string of its text, which the loader will then reject as not an object).
    """
    if isinstance(item, OCRResult):
        return item.model_dump_json().encode("utf-8")
    if isinstance(item, str | bytes):
        raw = item if isinstance(item, bytes) else item.encode("utf-8", "surrogatepass")
        raw = raw.removesuffix(b"\n")
        if b"\n" not in raw:
            return raw
        try:
            return json.dumps(json.loads(raw), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (ValueError, UnicodeError):
            return json.dumps(raw.decode("utf-8", "backslashreplace")).encode("utf-8")
    if isinstance(item, Mapping):
        try:
            return json.dumps(item, ensure_ascii=False, default=repr).encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate: escaped, it survives the trip and the loader reports it.
            return json.dumps(item, default=repr).encode("utf-8")
    # Not an OCR result at all; the loader rejects it with this text as raw input.
    return json.dumps(repr(item)).encode("utf-8")


def _write_lines(out: IO[bytes] | gzip.GzipFile, lines: Iterable[bytes]) -> int:
    count = 0
    for line in lines:
        out.write(line)
        out.write(b"\n")
        count += 1
    return count


def encode_into(out: IO[bytes], lines: Iterable[bytes], *, compress: bool) -> int:
    """Write JSON lines into an open binary file (gzip level 1 when ``compress``); returns the count."""
    if not compress:
        return _write_lines(out, lines)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=_GZIP_LEVEL) as gz:
        return _write_lines(gz, lines)


def write_batch_file(
    lines: Iterable[bytes], spool_dir: Path, batch_id: str, *, compress: bool = True
) -> Path:
    """Write JSON lines to a new file in ``spool_dir``; returns its path.

    Written under a temporary name and renamed when complete, so a worker never
    sees half a file.
    """
    spool_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in batch_id)[:80]
    final = spool_dir / f"{safe}-{uuid.uuid4().hex}.jsonl{'.gz' if compress else ''}"
    partial = final.with_name(f".{final.name}.partial")
    try:
        with open(partial, "wb") as raw:
            encode_into(raw, lines, compress=compress)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return final


def resolve_reference(reference: str, spool_dir: Path) -> Path:
    """The file a reference names, checked to exist inside ``spool_dir``."""
    if reference.startswith("file:"):
        url = urlparse(reference)
        if url.netloc not in {"", "localhost"}:
            raise BatchReferenceError(
                f"batch reference {reference!r} names host {url.netloc!r}; only local files "
                "(file:///path) are supported"
            )
        path = Path(unquote(url.path))
    else:
        path = Path(reference)
    if not path.is_absolute():
        raise BatchReferenceError(
            f"batch reference {reference!r} is neither a file:// URL nor an absolute path"
        )
    root = spool_dir.resolve()
    try:
        resolved = path.resolve(strict=True)
    except OSError as exc:
        raise BatchReferenceError(
            f"batch file {path} cannot be read ({exc.strerror or exc}); the spool directory "
            f"must be shared by the submitting process and the workers (LOADER_SPOOL_DIR={root})"
        ) from exc
    if not resolved.is_relative_to(root):
        raise BatchReferenceError(
            f"batch file {path} is outside the worker's spool directory {root}; "
            "set LOADER_SPOOL_DIR on the worker to the directory the files are written to"
        )
    return resolved


def read_lines(path: Path) -> Iterator[bytes]:
    """The file's lines without their newline, streamed (raw bytes kept, whatever they are)."""
    try:
        yield from jsonl.read_lines(path, check_text=False)
    except InputFileError as exc:
        raise BatchReferenceError(f"batch file {path} is unreadable: {exc}") from exc


def _total_for(pool: ConnectionPool, batch_id: str, path: Path, total_images: int | None) -> int | None:
    """The total a new batch is registered with: the file's non-blank lines unless given
    (a blank line is no input, as in `loader load`)."""
    if total_images is not None:
        return total_images
    try:
        get_progress(pool, batch_id)
    except BatchNotFoundError:
        lines, blank = jsonl.line_counts(str(path))
        return lines - blank
    return None  # an existing batch keeps its own


def load_file(
    pool: ConnectionPool,
    batch_id: str,
    path: Path,
    *,
    total_images: int | None,
    chunk_images: int,
    settings: Settings,
    limits: Limits | None = None,
    position_offset: int = 0,
    replace: bool = False,
) -> LoadReport:
    """Load a JSONL batch file, ``chunk_images`` lines per transaction (loader.save.chunks).

    Without ``total_images``, a new batch's total is the file's non-blank line
    count; an existing batch keeps its own. Line N is the input at position
    ``position_offset`` + N of the batch.
    """
    started = time.perf_counter()

    def store(judged: Judged) -> LoadReport:
        report = save_judged(pool, batch_id, judged, total_images=total, settings=settings, replace=replace)
        record_save(report)
        return report

    try:
        total = _total_for(pool, batch_id, path, total_images)
        sources = jsonl.Sources([str(path)], check_text=False)
        outcome = load_chunks(
            batch_id, sources, store, chunk_size=chunk_images, offset=position_offset, limits=limits
        )
    except InputFileError as exc:
        raise BatchReferenceError(
            f"batch file {path} is unreadable: {exc}; the lines before it may be stored (each chunk "
            "commits on its own), so fix the file and send the task again"
        ) from exc
    if not outcome.totals.chunks:  # an empty file still creates (or checks) the batch
        report = save_batch(pool, batch_id, [], total_images=total, settings=settings)
        record_save(report)
        return report
    return outcome.totals.report(time.perf_counter() - started)


def inline_form(item: Input) -> Any:
    """An input as the JSON message carries it; None if it cannot travel inline."""
    if isinstance(item, OCRResult):
        return item.model_dump(mode="json")
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return None  # only a file keeps these bytes exactly
    if isinstance(item, str):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return item
    if isinstance(item, Mapping):
        return dict(item)
    return repr(item)
