"""The FastAPI endpoint of docs/progress-events.md, run for real: the code block of
that page under uvicorn, read with httpx while a batch loads."""

from __future__ import annotations

import json
import queue
import re
import socket
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from loader import register_batch, save_batch
from loader.datagen import make_batch

DOC = Path(__file__).resolve().parent.parent / "docs" / "progress-events.md"


def _endpoint_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "FastAPI()" in b]
    return code


@pytest.fixture
def base_url(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("LOADER_DSN", dsn)
    module = types.ModuleType("progress_sse_doc")
    exec(compile(_endpoint_code(), str(DOC), "exec"), module.__dict__)  # the page's own code
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(module.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def _read_events(url: str, into: queue.Queue[Any]) -> None:
    try:
        with httpx.stream("GET", url, timeout=30) as response:
            into.put(response.status_code)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    into.put(json.loads(line[len("data: ") :]))
        into.put("end")
    except Exception as exc:  # handed to the test thread
        into.put(exc)


def test_the_documented_endpoint_streams_events_in_order_and_ends_at_success(
    base_url: str, conn: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "sse", 30)
    data = make_batch(30, prefix="sse")
    save_batch(conn, "sse", data[:10])
    events: queue.Queue[Any] = queue.Queue()
    reader = threading.Thread(target=_read_events, args=(f"{base_url}/batches/sse/progress", events))
    reader.start()

    assert events.get(timeout=30) == 200
    first = events.get(timeout=30)  # the current state: the endpoint is listening now
    save_batch(conn, "sse", data[10:20], position_offset=10)
    save_batch(conn, "sse", data[10:20], position_offset=10)  # a replay: no event
    save_batch(conn, "sse", data[20:], position_offset=20)
    reader.join(timeout=30)
    rest = []
    while (item := events.get(timeout=5)) != "end":
        assert not isinstance(item, Exception), item
        rest.append(item)

    assert first == {"batch_id": "sse", "completed": 10, "failed": 0, "total": 30, "status": "STARTED"}
    assert [(e["completed"], e["status"]) for e in rest] == [(20, "STARTED"), (30, "SUCCESS")]


def test_the_documented_endpoint_answers_404_for_an_unknown_batch(base_url: str) -> None:
    response = httpx.get(f"{base_url}/batches/nope/progress", timeout=30)

    assert response.status_code == 404 and "nope" in response.json()["detail"]
