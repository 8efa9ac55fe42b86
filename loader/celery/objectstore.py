"""Batch payloads in an S3-compatible object store: the claim check for a fleet.

A batch too large for the message is written by ``submit_batch`` as one
gzip-compressed JSONL object under ``LOADER_SPOOL_URL=s3://bucket/prefix``; the
message carries only its ``s3://`` URL, so any worker on any host can take the
task. The endpoint and credentials are boto3's own standard settings
(``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role, ``AWS_DEFAULT_REGION``,
...), so MinIO, Ceph, R2 or AWS itself work alike.

Why boto3 (and not fsspec/s3fs): it is the reference S3 client, it reads every
standard endpoint and credential setting, it streams uploads and downloads
through s3transfer (multipart, bounded memory), and it pins nothing else of
ours; s3fs would add aiobotocore, which pins exact botocore versions.

The worker streams the object to a local temporary file in its own
``LOADER_SPOOL_DIR`` (never into memory) and checks it against the SHA-256 the
submitter stored in the object's metadata *before* the first chunk is loaded: a
missing, truncated or corrupted object fails the task with nothing stored. The
local copy also gives a new batch its total (the line count) without a second
read of the object. The object is deleted only after its whole batch committed;
on any failure it is kept for the redelivery.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

from loader.celery.payload import encode_into
from loader.errors import BatchReferenceError, ConfigurationError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SCHEME = "s3"
# Object metadata written by the submitter and checked by the worker.
SHA256_KEY = "sha256"
LINES_KEY = "lines"
# Attempts of one S3 request (botocore's "standard" retry mode: throttling and
# connection errors, with backoff) before the task fails: an object store that
# is away longer than that is an outage for the operator, not a blip.
_MAX_ATTEMPTS = 5
# Read size when hashing a batch file: large enough that hashing runs at memory speed.
_HASH_BLOCK_BYTES = 1024 * 1024
# HTTP statuses / S3 error codes meaning "no such object".
_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class ObjectSpool:
    """Where large batches go: a bucket and a key prefix ("" or ending in "/")."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> ObjectSpool:
        parsed = urlparse(url)
        if parsed.scheme != SCHEME or not parsed.netloc:
            raise ConfigurationError(
                f"LOADER_SPOOL_URL={url!r} is not an object store URL; use s3://bucket/prefix "
                "(or file:///path for a directory every worker mounts)"
            )
        prefix = parsed.path.lstrip("/")
        return cls(parsed.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/")

    @property
    def url(self) -> str:
        return f"{SCHEME}://{self.bucket}/{self.prefix}"

    def reference(self, key: str) -> str:
        return f"{SCHEME}://{self.bucket}/{key}"

    def key_of(self, reference: str) -> str:
        """The key a reference names, checked to lie under this spool: a message must
        not make the worker load (and delete) any object its credentials can reach."""
        parsed = urlparse(reference)
        key = parsed.path.lstrip("/")
        if parsed.netloc != self.bucket or not key.startswith(self.prefix) or ".." in key.split("/"):
            raise BatchReferenceError(
                f"batch object {reference} is outside the worker's object spool {self.url}; "
                "set LOADER_SPOOL_URL on the worker to the bucket and prefix the batches are written to"
            )
        return key


def is_object_reference(reference: str) -> bool:
    return reference.startswith(f"{SCHEME}://")


# One client per process: boto3 clients are thread-safe but their connection
# pools must not cross fork(), so a prefork child makes its own.
_clients: dict[int, S3Client] = {}


def s3_client() -> S3Client:
    """This process's S3 client, configured by boto3's standard settings."""
    client = _clients.get(os.getpid())
    if client is None:
        try:
            import boto3  # noqa: PLC0415  (optional dependency: the "s3" extra)
            from botocore.config import Config  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigurationError(
                "LOADER_SPOOL_URL is an s3:// URL but boto3 is not installed: "
                "pip install 'ocr-batch-loader[s3]'"
            ) from exc
        config = Config(retries={"mode": "standard", "max_attempts": _MAX_ATTEMPTS})
        client = _clients[os.getpid()] = boto3.client("s3", config=config)
    return client


def _sha256(file: IO[bytes]) -> str:
    file.seek(0)
    digest = hashlib.sha256()
    while block := file.read(_HASH_BLOCK_BYTES):
        digest.update(block)
    file.seek(0)
    return digest.hexdigest()


def put_batch(lines: Iterable[bytes], spool: ObjectSpool, batch_id: str, scratch: Path) -> str:
    """Write ``lines`` as one gzip JSONL object under ``spool``; returns its s3:// URL.

    The lines go to an anonymous temporary file in ``scratch`` first (bounded
    memory, and the SHA-256 known before the upload starts), then up in parts;
    the object appears whole or not at all (a PUT and a multipart completion
    are atomic in S3).
    """
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in batch_id)[:80]
    key = f"{spool.prefix}{safe}-{uuid.uuid4().hex}.jsonl.gz"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=scratch, prefix=".upload-") as file:
        count = encode_into(file, lines, compress=True)
        file.flush()
        metadata = {SHA256_KEY: _sha256(file), LINES_KEY: str(count)}
        _call(
            spool.reference(key),
            lambda: s3_client().upload_fileobj(file, spool.bucket, key, ExtraArgs={"Metadata": metadata}),
        )
    return spool.reference(key)


def _call(reference: str, request: Any) -> Any:
    """Run one S3 request, its errors translated into the loader's (not retried by the task)."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    try:
        return request()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _MISSING:
            raise BatchReferenceError(
                f"batch object {reference} does not exist; if `loader status` shows its batch complete, "
                "an earlier delivery of this task loaded it and deleted the object"
            ) from exc
        raise BatchReferenceError(
            f"batch object {reference}: the object store refused the request ({code}: "
            f"{error.get('Message', exc)})"
        ) from exc
    except BotoCoreError as exc:
        raise BatchReferenceError(
            f"batch object {reference}: the object store cannot be reached ({exc})"
        ) from exc


@contextmanager
def fetched(reference: str, spool: ObjectSpool, scratch: Path) -> Iterator[Path]:
    """The object downloaded (streamed) to a temporary file in ``scratch`` and
    verified against its SHA-256; the file is removed when the block ends."""
    key = spool.key_of(reference)
    client = s3_client()
    head = _call(reference, lambda: client.head_object(Bucket=spool.bucket, Key=key))
    expected = head.get("Metadata", {}).get(SHA256_KEY)
    if not expected:
        raise BatchReferenceError(
            f"batch object {reference} carries no {SHA256_KEY} metadata; the worker loads only objects "
            "written by submit_batch (or uploaded with x-amz-meta-sha256 set to the body's SHA-256)"
        )
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, prefix=".download-", suffix=".jsonl") as file:
        _call(reference, lambda: client.download_fileobj(spool.bucket, key, file))
        file.flush()
        actual = _sha256(file)
        if actual != expected:
            raise BatchReferenceError(
                f"batch object {reference} is corrupted: its SHA-256 is {actual}, the submitter wrote "
                f"{expected}; nothing was loaded. Send the batch again"
            )
        yield Path(file.name)


def delete(reference: str, spool: ObjectSpool) -> None:
    """Delete the object (after its batch committed); deleting a missing one is not an error."""
    key = spool.key_of(reference)
    _call(reference, lambda: s3_client().delete_object(Bucket=spool.bucket, Key=key))
