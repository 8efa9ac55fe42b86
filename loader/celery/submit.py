"""Sending a batch to the loader's task: inline when small, as a file reference when large."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from loader.celery.config import TASK_NAME, config
from loader.celery.payload import encode_line, inline_form
from loader.celery.spool import spool_batch
from loader.save.inputs import Input


@dataclass(frozen=True)
class Submission:
    """A sent batch: the task's result handle and how the results travelled."""

    result: AsyncResult[Any]
    images: int
    #: Bytes of the results as JSON lines (what the inline limit is measured in).
    payload_bytes: int
    #: The s3:// or file:// URL of the batch, or None when the results went inline.
    #: The worker deletes an s3:// object once its batch committed; the caller
    #: owns a file: delete it once the task has succeeded (a redelivered
    #: message would need it until then).
    reference: str | None

    @property
    def inline(self) -> bool:
        return self.reference is None


def submit_batch(
    batch_id: str,
    results: Iterable[Input],
    *,
    total_images: int | None = None,
    position_offset: int = 0,
    replace: bool = False,
    app: Celery | None = None,
    queue: str | None = None,
    inline_max_bytes: int | None = None,
    spool_dir: Path | str | None = None,
    spool_url: str | None = None,
    compress: bool = True,
    **options: Any,
) -> Submission:
    """Send ``results`` to ``loader.save_ocr_batch``; returns at once with the result handle.

    Results up to ``inline_max_bytes`` (LOADER_INLINE_MAX_BYTES, as JSON lines)
    travel inside the message; a larger batch is written to the object store
    ``spool_url`` (LOADER_SPOOL_URL, s3://bucket/prefix; the worker deletes the
    object once its batch committed) or, without one, to a JSONL file in
    ``spool_dir`` (LOADER_SPOOL_DIR, which the workers must see at the same
    path), and the message carries its s3:// or file:// URL. ``results`` may
    be a generator: it is read once, and past the limit streamed to the file
    rather than kept.
    ``options`` go to Celery's ``send_task`` (e.g. ``countdown``, ``task_id``).

    A batch sent in chunks: each chunk passes ``position_offset`` (the position
    in the batch of its first result) and the batch's ``total_images``, so the
    chunks may be sent in any order, any number of times. ``replace=True``
    re-runs OCR: the results replace the batch's stored ones (save_batch).
    """
    cfg = config()
    limit = cfg.inline_max_bytes if inline_max_bytes is None else inline_max_bytes
    spool = Path(spool_dir) if spool_dir is not None else cfg.spool_dir
    if app is None:
        from loader.celery.app import app as loader_app  # noqa: PLC0415  (configured lazily)

        app = loader_app

    items = iter(results)
    inline: list[Any] = []
    lines: list[bytes] = []
    size = 0
    fits = True
    for item in items:
        line = encode_line(item)
        lines.append(line)
        size += len(line) + 1
        form = inline_form(item)
        if size > limit or form is None:
            fits = False
            break
        inline.append(form)

    if fits:
        payload: list[Any] | str = inline
        reference = None
        count = len(inline)
    else:
        counter = _Counter(chain(lines, (encode_line(item) for item in items)))
        url = cfg.spool_url if spool_url is None else spool_url
        reference = spool_batch(counter, batch_id, spool_url=url, spool_dir=spool, compress=compress)
        payload = reference
        count, size = counter.lines, counter.bytes
    result = app.send_task(
        TASK_NAME,
        args=(batch_id, payload),
        kwargs={"total_images": total_images, "position_offset": position_offset, "replace": replace},
        queue=queue or _routed_queue(app) or cfg.queue,
        **options,
    )
    return Submission(result=result, images=count, payload_bytes=size, reference=reference)


def _routed_queue(app: Celery) -> str | None:
    """The queue the app routes the loader's task to (apps from make_app do), if any."""
    routes = app.conf.task_routes
    route = routes.get(TASK_NAME) if isinstance(routes, dict) else None
    queue = route.get("queue") if isinstance(route, dict) else None
    return queue if isinstance(queue, str) else None


class _Counter:
    """Counts the lines and bytes passing through on their way to the file."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._lines = lines
        self.lines = 0
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._lines:
            self.lines += 1
            self.bytes += len(line) + 1
            yield line
