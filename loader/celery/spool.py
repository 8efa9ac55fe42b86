"""Where a batch too large for its message travels, and how a worker loads it back.

Two stores: a file in a spool directory (``file://``, for one host or a volume
every worker mounts, LOADER_SPOOL_DIR) and an object in an S3-compatible store
(``s3://``, for a fleet, LOADER_SPOOL_URL; see loader.celery.objectstore).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from psycopg_pool import ConnectionPool

from loader.celery import objectstore
from loader.celery.config import CeleryConfig
from loader.celery.payload import load_file, resolve_reference, write_batch_file
from loader.errors import BatchReferenceError
from loader.models import LoadReport
from loader.progress.metrics import record_payload


def spool_batch(
    lines: Iterable[bytes], batch_id: str, *, spool_url: str | None, spool_dir: Path, compress: bool
) -> str:
    """Store the batch's JSON lines; returns the reference the message carries.

    With ``spool_url`` (s3://) the object is always gzip-compressed and
    ``spool_dir`` only holds the upload's temporary file.
    """
    if spool_url:
        return objectstore.put_batch(lines, objectstore.ObjectSpool.parse(spool_url), batch_id, spool_dir)
    return write_batch_file(lines, spool_dir, batch_id, compress=compress).as_uri()


def load_reference(
    pool: ConnectionPool,
    batch_id: str,
    reference: str,
    cfg: CeleryConfig,
    total_images: int | None,
    position_offset: int = 0,
    replace: bool = False,
) -> LoadReport:
    """Load the batch a reference names (file:// or path inside LOADER_SPOOL_DIR, or
    s3:// under LOADER_SPOOL_URL); an object is deleted once its batch committed.
    Line N of the file is the input at position ``position_offset`` + N."""
    if not objectstore.is_object_reference(reference):
        path = resolve_reference(reference, cfg.spool_dir)
        record_payload("file", path.stat().st_size)
        return load_file(
            pool,
            batch_id,
            path,
            total_images=total_images,
            chunk_images=cfg.chunk_images,
            settings=cfg.save_settings,
            limits=cfg.save_limits,
            position_offset=position_offset,
            replace=replace,
        )
    if cfg.spool_url is None:
        raise BatchReferenceError(
            f"batch object {reference}: this worker has no object store; set LOADER_SPOOL_URL "
            "(s3://bucket/prefix) and the AWS_* endpoint and credential settings on the worker"
        )
    spool = objectstore.ObjectSpool.parse(cfg.spool_url)
    with objectstore.fetched(reference, spool, cfg.spool_dir) as path:
        record_payload("s3", path.stat().st_size)
        report = load_file(
            pool,
            batch_id,
            path,
            total_images=total_images,
            chunk_images=cfg.chunk_images,
            settings=cfg.save_settings,
            limits=cfg.save_limits,
            position_offset=position_offset,
            replace=replace,
        )
    # Only now: every chunk committed. A failure above keeps the object for the redelivery.
    objectstore.delete(reference, spool)
    return report
