"""The FastAPI endpoint of docs/progress-events.md, run for real: the code block of
that page under uvicorn, read with httpx while a batch loads."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import socket
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from loader import register_batch, save_batch
from loader.aio import ProgressHub
from loader.datagen import make_batch
from loader.progress.read import CHANNEL

DOC = Path(__file__).resolve().parents[2] / "docs" / "progress-events.md"
#: The page's SSE_HEARTBEAT_S for these tests: short, so a quiet stream shows some.
HEARTBEAT_S = 0.3
#: Streams open at once in the fan-out and disconnect tests.
STREAMS = 40
#: The page's pool size (make_async_pool(DSN, max_size=4)).
PAGE_POOL_MAX = 4


def _endpoint_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "FastAPI(" in b]
    return code


@dataclass
class Served:
    url: str
    app: Any

    @property
    def hub(self) -> ProgressHub:
        hub: ProgressHub = self.app.state.hub
        return hub


# Seconds a condition may take: generous, for a loaded 2-core machine (a bound, not a timing).
UNTIL_S = 120


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + UNTIL_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def served(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("LOADER_DSN", dsn)
    monkeypatch.delenv("LOADER_LISTEN_DSN", raising=False)
    monkeypatch.setenv("SSE_HEARTBEAT_S", str(HEARTBEAT_S))
    module = types.ModuleType("progress_sse_doc")
    exec(compile(_endpoint_code(), str(DOC), "exec"), module.__dict__)  # the page's own code
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(module.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _until(lambda: server.started, "uvicorn did not start")
    yield Served(f"http://127.0.0.1:{port}", module.app)
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def base_url(served: Served) -> str:
    return served.url


def _read_events(url: str, into: queue.Queue[Any]) -> None:
    try:
        with httpx.stream("GET", url, timeout=30) as response:
            into.put(response.status_code)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    into.put(json.loads(line[len("data: ") :]))
                elif line.startswith(":"):
                    into.put(line)
        into.put("end")
    except Exception as exc:  # handed to the test thread
        into.put(exc)


def _rest(events: queue.Queue[Any]) -> list[Any]:
    rest = []
    while (item := events.get(timeout=30)) != "end":
        assert not isinstance(item, Exception), item
        rest.append(item)
    return rest


def test_the_documented_endpoint_streams_events_in_order_and_ends_at_success(
    base_url: str, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "sse", 30)
    data = make_batch(30, prefix="sse")
    save_batch(conn, "sse", data[:10])
    events: queue.Queue[Any] = queue.Queue()
    reader = threading.Thread(target=_read_events, args=(f"{base_url}/batches/sse/progress", events))
    reader.start()

    assert events.get(timeout=30) == 200
    first = events.get(timeout=30)  # the current state: the endpoint is listening now
    forged = {"batch_id": "sse", "completed": 30, "failed": 0, "total": 30, "status": "SUCCESS"}
    db.execute("SELECT pg_notify(%s, %s)", [CHANNEL, json.dumps(forged)])  # not believed
    save_batch(conn, "sse", data[10:20], position_offset=10)
    save_batch(conn, "sse", data[10:20], position_offset=10)  # a replay: no event
    save_batch(conn, "sse", data[20:], position_offset=20)
    reader.join(timeout=30)
    rest = [e for e in _rest(events) if isinstance(e, dict)]

    assert first == {"batch_id": "sse", "completed": 10, "failed": 0, "total": 30, "status": "STARTED"}
    assert [(e["completed"], e["status"]) for e in rest] == [(20, "STARTED"), (30, "SUCCESS")]


def test_the_documented_endpoint_answers_404_for_an_unknown_batch(served: Served) -> None:
    response = httpx.get(f"{served.url}/batches/nope/progress", timeout=30)

    assert response.status_code == 404 and "nope" in response.json()["detail"]
    assert served.hub.followers == 0


def test_a_quiet_stream_carries_heartbeats_until_the_batch_finishes(
    base_url: str, conn: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "quiet", 10)
    events: queue.Queue[Any] = queue.Queue()
    reader = threading.Thread(target=_read_events, args=(f"{base_url}/batches/quiet/progress", events))
    reader.start()
    assert events.get(timeout=30) == 200
    assert events.get(timeout=30)["status"] == "PENDING"

    heartbeats = [events.get(timeout=30) for _ in range(3)]  # nothing changes meanwhile
    save_batch(conn, "quiet", make_batch(10, prefix="quiet"))
    reader.join(timeout=30)
    rest = _rest(events)

    assert heartbeats == [": heartbeat"] * 3
    assert [e["status"] for e in rest if isinstance(e, dict)] == ["SUCCESS"]


async def _open_streams(url: str, n: int, opened: Callable[[], None]) -> list[dict[str, Any]]:
    """``n`` streams at once; after each sent its first event, ``opened()``; then disconnect them all."""
    firsts: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        streams = [client.stream("GET", url) for _ in range(n)]
        responses = await asyncio.gather(*(s.__aenter__() for s in streams))
        # Each stream's line iterator is kept until the end: one dropped after its first
        # line is closed whenever the garbage collector gets to it, and closing it closes
        # its connection, which the server rightly sees as the browser going away.
        readers = [response.aiter_lines() for response in responses]
        for reader in readers:
            async for line in reader:
                if line.startswith("data: "):
                    firsts.append(json.loads(line[len("data: ") :]))
                    break
        await asyncio.to_thread(opened)
        for s in streams:
            await s.__aexit__(None, None, None)  # the browser goes away
    return firsts


def test_many_streams_share_one_listening_connection_and_a_disconnect_ends_a_subscription(
    served: Served, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    register_batch(conn, "many", 10)
    held: list[int] = []

    def while_open() -> None:
        _until(lambda: served.hub.followers == STREAMS, f"not {STREAMS} followers: {served.hub.followers}")
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
        held.append(int(row[0]) if row else 0)

    firsts = asyncio.run(_open_streams(f"{served.url}/batches/many/progress", STREAMS, while_open))
    _until(lambda: served.hub.followers == 0, f"{served.hub.followers} subscriptions left after disconnect")

    assert [f["status"] for f in firsts] == ["PENDING"] * STREAMS
    # The test's own two connections (conn, db) aside: one listener and the page's pool.
    assert held[0] - 1 <= 1 + PAGE_POOL_MAX
