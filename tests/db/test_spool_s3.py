"""Large batches through an object store (claim check), against a real S3-compatible
server (moto's, on loopback) and real prefork worker subprocesses.

The submitter and the worker share no directory: each has its own spool
directory, so the only way a batch reaches the worker is the object store.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.celery_harness import (
    Broker,
    Worker,
    process_gone,
    wait_for,
    wait_task_log,
    worker_backend,
)
from helpers.checks import assert_totals_match_recount, hold_image_path, stored_totals
from helpers.s3_server import S3Server, moto_server
from prometheus_client.parser import text_string_to_metric_families

from loader.celery import TASK_NAME, CeleryConfig, objectstore, submit_batch
from loader.datagen import make_batch, make_result
from loader.errors import ConfigurationError

# Seconds to wait for a task's result: generous for a loaded 2-core machine.
RESULT_TIMEOUT_S = 120
# 200,000 images are ~20 chunks of 10,000: minutes on a busy 2-core machine.
BIG_RESULT_TIMEOUT_S = 1200


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    logfile = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(logfile) as server, pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE"):
            env.delenv(name, raising=False)
        for name, value in server.env.items():
            env.setenv(name, value)
        objectstore._clients.clear()  # made with the settings of before, if any
        yield server
        objectstore._clients.clear()


@pytest.fixture
def spool_url(s3: S3Server) -> Iterator[str]:
    """s3://<a bucket of this test's own>/batches/, emptied and removed afterwards."""
    bucket = f"loader-test-{uuid.uuid4().hex[:12]}"
    client = objectstore.s3_client()
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/batches/"
    for key in _keys(bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def start_worker(
    broker: Broker, dsn: str, tmp_path: Path, s3: S3Server, spool_url: str
) -> Iterator[Callable[..., Worker]]:
    """A worker with the object store and a spool directory of its own (no shared files)."""
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        scratch = tmp_path / f"worker-{len(workers)}"
        worker = Worker(broker, dsn, scratch, {**s3.env, "LOADER_SPOOL_URL": spool_url, **env})
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


def _bucket(spool_url: str) -> str:
    return objectstore.ObjectSpool.parse(spool_url).bucket


def _keys(bucket: str) -> list[str]:
    listing = objectstore.s3_client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _batch_rows(db: psycopg.Connection[Any], batch_id: str) -> int:
    row = db.execute("SELECT count(*) FROM batch_executions WHERE batch_id = %s", [batch_id]).fetchone()
    assert row is not None
    return int(row[0])


def test_large_batch_reaches_a_worker_that_shares_no_directory_and_the_object_is_deleted_after_commit(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any], spool_url: str, tmp_path: Path
) -> None:
    metrics_port = _free_port()
    worker = start_worker(
        LOADER_CHUNK_IMAGES="700",
        LOADER_METRICS_PORT=str(metrics_port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
    )
    client = worker.client()
    submitter_dir = tmp_path / "submitter-spool"
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in make_batch(2000, prefix="s3-big")]
    lines[1234] = b'{"image_path": "/data/s3-big/broken.jpg", "text_boxes": ['

    submission = submit_batch(
        "s3-big", lines, app=client, inline_max_bytes=64 * 1024, spool_dir=submitter_dir, spool_url=spool_url
    )
    assert submission.reference is not None and submission.reference.startswith(spool_url)
    assert submission.images == 2000
    assert _files(submitter_dir) == []  # the upload's temporary file is gone: nothing to share
    report = submission.result.get(timeout=RESULT_TIMEOUT_S)

    assert (report["received"], report["stored"], report["rejected"]) == (2000, 1999, 1)
    assert stored_totals(db, "s3-big") == (2000, 1999, 1, "SUCCESS")
    assert_totals_match_recount(db, "s3-big")
    rejects = db.execute("SELECT position, raw FROM load_rejects WHERE batch_id = 's3-big'").fetchall()
    assert rejects == [(1234, lines[1234])]
    assert _keys(_bucket(spool_url)) == []  # deleted once the batch committed
    assert _files(worker.spool_dir) == []  # and the worker's local copy too
    # Metrics: one save per chunk (700 + 700 + 600 lines), the object's bytes as stored (gzip).
    samples = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert samples[("loader_save_duration_seconds_count", ())] == 3
    assert samples[("loader_images_total", (("outcome", "stored"),))] == 1999
    assert 0 < samples[("loader_payload_bytes_total", (("transport", "s3"),))] < submission.payload_bytes / 2
    client.close()


def test_worker_killed_mid_object_load_keeps_the_object_and_the_redelivery_stores_each_image_once(
    start_worker: Callable[..., Worker], dsn: str, db: psycopg.Connection[Any], spool_url: str, tmp_path: Path
) -> None:
    worker = start_worker(LOADER_CHUNK_IMAGES="200")
    client = worker.client()
    results = make_batch(500, prefix="s3-killed")
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in results]

    blocker = hold_image_path(dsn, results[300]["image_path"])
    try:
        submission = submit_batch(
            "s3-killed", lines, app=client, inline_max_bytes=1024, spool_dir=tmp_path / "submitter",
            spool_url=spool_url,
        )  # fmt: skip
        _, victim = wait_for("the second chunk's merge to wait on the lock", lambda: worker_backend(db))
        assert stored_totals(db, "s3-killed")[1:3] == (200, 0)  # the first chunk is committed
        os.kill(victim, signal.SIGKILL)
        wait_for("the killed worker process to be gone", lambda: process_gone(victim))
        wait_for(
            "the redelivered task to run in a new worker process",
            lambda: worker_backend(db, exclude_worker=victim),
        )
        # The redelivery read the object again: it was kept, since the batch had not committed.
        assert len(_keys(_bucket(spool_url))) == 1
        assert stored_totals(db, "s3-killed")[1:3] == (200, 0)  # the killed chunk left nothing
    finally:
        blocker.rollback()
        blocker.close()

    report = submission.result.get(timeout=RESULT_TIMEOUT_S)
    assert (report["received"], report["unchanged"], report["stored"]) == (500, 200, 300)
    assert stored_totals(db, "s3-killed") == (500, 500, 0, "SUCCESS")
    assert_totals_match_recount(db, "s3-killed")
    assert db.execute("SELECT count(*), count(DISTINCT image_path) FROM ocr_executions").fetchone() == (
        500,
        500,
    )
    assert db.execute("SELECT count(*) FROM ocr_text_boxes").fetchone() == (2500,)
    assert _keys(_bucket(spool_url)) == []
    client.close()


def test_missing_corrupted_or_foreign_objects_fail_the_task_clearly_and_store_nothing(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any], spool_url: str, tmp_path: Path
) -> None:
    worker = start_worker()
    client = worker.client()
    s3 = objectstore.s3_client()
    spool = objectstore.ObjectSpool.parse(spool_url)
    lines = [json.dumps(r).encode() for r in make_batch(300, prefix="s3-bad")]

    corrupted = objectstore.put_batch(lines, spool, "corrupted", tmp_path / "submitter")
    key = spool.key_of(corrupted)
    head = s3.head_object(Bucket=spool.bucket, Key=key)
    body = s3.get_object(Bucket=spool.bucket, Key=key)["Body"].read()
    # Truncated, as by an interrupted copy, under the submitter's checksum.
    s3.put_object(Bucket=spool.bucket, Key=key, Body=body[: len(body) // 2], Metadata=head["Metadata"])
    unsigned = f"{spool.prefix}unsigned.jsonl"
    s3.put_object(Bucket=spool.bucket, Key=unsigned, Body=b"\n".join(lines))
    s3.create_bucket(Bucket=f"{spool.bucket}-other")
    s3.put_object(Bucket=f"{spool.bucket}-other", Key="batches/x.jsonl", Body=b"\n".join(lines))

    cases = {
        "missing": (f"{spool_url}absent.jsonl.gz", "does not exist"),
        "corrupted": (corrupted, "is corrupted"),
        "unsigned": (spool.reference(unsigned), "carries no sha256 metadata"),
        "foreign": (f"s3://{spool.bucket}-other/batches/x.jsonl", "outside the worker's object spool"),
        "traversal": (f"{spool_url}../elsewhere.jsonl", "outside the worker's object spool"),
    }
    for batch_id, (reference, expected) in cases.items():
        task = client.send_task(TASK_NAME, args=(batch_id, reference), queue=worker.queue)
        task.get(timeout=RESULT_TIMEOUT_S, propagate=False)
        assert task.state == "FAILURE", batch_id
        log = wait_task_log(db, task.id, "FAILURE")
        assert log["retries"] == 0 and "BatchReferenceError" in log["error"], (batch_id, log["error"])
        assert expected in log["error"], (batch_id, log["error"])
        assert _batch_rows(db, batch_id) == 0, batch_id

    assert db.execute("SELECT count(*) FROM ocr_executions").fetchone() == (0,)
    assert key in _keys(spool.bucket)  # a failed load deletes nothing
    s3.delete_object(Bucket=f"{spool.bucket}-other", Key="batches/x.jsonl")
    s3.delete_bucket(Bucket=f"{spool.bucket}-other")
    assert _files(worker.spool_dir) == []
    client.close()


@pytest.mark.slow
@pytest.mark.timeout(BIG_RESULT_TIMEOUT_S + 120)
def test_200000_images_stream_through_the_object_store(
    start_worker: Callable[..., Worker], db: psycopg.Connection[Any], spool_url: str, tmp_path: Path
) -> None:
    worker = start_worker()  # the defaults: 4 MiB inline limit, 10,000 lines per transaction
    client = worker.client()
    rng = random.Random(200_000)
    results = (make_result(i, rng, prefix="s3-200k") for i in range(200_000))  # read once, never a list

    submission = submit_batch(
        "s3-200k", results, app=client, spool_dir=tmp_path / "submitter", spool_url=spool_url
    )
    assert submission.reference is not None and submission.reference.startswith(spool_url)
    assert submission.images == 200_000
    report = submission.result.get(timeout=BIG_RESULT_TIMEOUT_S)

    assert (report["received"], report["stored"], report["rejected"], report["failed"]) == (
        200_000,
        200_000,
        0,
        0,
    )
    assert stored_totals(db, "s3-200k") == (200_000, 200_000, 0, "SUCCESS")
    counts = db.execute("SELECT (SELECT count(*) FROM ocr_executions), (SELECT count(*) FROM ocr_text_boxes)")
    assert counts.fetchone() == (200_000, 1_000_000)
    assert _keys(_bucket(spool_url)) == []
    client.close()


def test_spool_url_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOADER_SPOOL_URL", raising=False)
    assert CeleryConfig.from_env().spool_url is None
    monkeypatch.setenv("LOADER_SPOOL_URL", "s3://spool/loader")
    assert CeleryConfig.from_env().spool_url == "s3://spool/loader"
    monkeypatch.setenv("LOADER_SPOOL_URL", "file:///var/spool/loader")
    with pytest.raises(ConfigurationError, match="not an s3://bucket/prefix URL"):
        CeleryConfig.from_env()
    assert objectstore.ObjectSpool.parse("s3://spool/loader").prefix == "loader/"
    assert objectstore.ObjectSpool.parse("s3://spool").prefix == ""
    with pytest.raises(ConfigurationError, match="not an object store URL"):
        objectstore.ObjectSpool.parse("s3:///no-bucket")
