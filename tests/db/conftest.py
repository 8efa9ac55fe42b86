"""Fixtures the Celery tests of tests/db share: one broker per session, workers per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.celery_harness import Broker, Worker, pick_broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Broker:
    """The broker every Celery test uses (each worker consumes its own queue on it)."""
    chosen = pick_broker(tmp_path_factory.mktemp("celery-broker"))
    print(f"\nCelery tests: broker {chosen.describe()}")
    return chosen


@pytest.fixture
def start_worker(broker: Broker, dsn: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start a worker (env overrides as keyword arguments); every one is stopped afterwards."""
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = Worker(broker, dsn, tmp_path, env)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()
