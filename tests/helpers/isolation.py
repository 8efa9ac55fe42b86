"""An isolation tester in Python, after PostgreSQL's ``src/test/isolation``.

A :class:`Spec` declares sessions, each an ordered list of named steps (Python callables:
loader API calls, or SQL the application would run). :func:`run_spec` runs every
permutation of the steps that keeps each session's order (or the spec's declared subset),
each session in its own thread on its own connections, and after each permutation checks
the invariants every batch must keep plus the spec's own expectation.

How a step is run, as isolationtester does it:

* The step is handed to its session's thread; the runner then waits until the step either
  completes or *blocks*: one of the session's backends (every connection a session opens
  carries its ``application_name``, pools and in-process CLI runs included) is waiting for
  a lock, i.e. ``pg_blocking_pids(pid)`` is not empty. That covers advisory locks, row and
  table locks. (``pg_stat_activity.wait_event_type = 'Lock'`` says the same, but the waiter
  writes it itself and lags behind a release; the lock table is updated by the releaser.)
* A blocked step is reported ``<waiting ...>`` and the permutation goes on with the next
  step. After every step the waiting ones are settled again: each runs on until it
  completes or blocks anew, so the interleaving is the same on every run.
* A session's next step, or the end of the permutation, awaits its waiting step. If that
  step waits only for sessions that are idle (they hold the lock inside an open
  transaction and have no step running), it can never finish: the permutation is
  *invalid* (old isolationtester's "invalid permutation detected"), is counted apart,
  and every permutation starting with the same prefix is skipped without running.

Each permutation gets a :class:`World`: its own namespace (``ns``) for batch ids and image
paths, so permutations share the test's database without seeing each other, and the
bookkeeping the invariants read (positions sent per batch, batches deleted).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from loader import BatchNotFoundError, LoadReport, get_progress, make_pool

#: Seconds a step may run without completing or blocking before the tester gives up on it
#: (a step that neither ends nor waits for a lock is a bug in the step or the loader).
STEP_TIMEOUT_S = 60.0
#: Seconds between two looks at a running step (the lock table is read each time): short
#: against a step's tens of milliseconds, long enough not to load a busy server.
POLL_S = 0.01
#: How long a waiting step is awaited while other sessions' steps that block it still run
#: (a deadlock is broken by the server after deadlock_timeout, 1 s by default).
AWAIT_TIMEOUT_S = 30.0

#: A waiting step is declared stuck (its blockers idle) after this many looks, this far apart.
IDLE_CHECKS = 3
IDLE_PAUSE_S = 0.05

StepFn = Callable[["SessionContext"], Any]


@dataclass(frozen=True)
class Step:
    """One named step of a session. ``writes``: the step may change a batch (the invariant
    "the last report equals get_progress" looks at the last writer to complete)."""

    name: str
    run: StepFn
    writes: bool = True


@dataclass(frozen=True)
class Session:
    """A session's steps, in order. ``app_names``: application names its connections use
    besides the session's own (the CLI names its connection ``loader-cli`` whatever the
    DSN says); one session at a time may use each in a permutation."""

    name: str
    steps: tuple[Step, ...]
    app_names: tuple[str, ...] = ()


@dataclass
class World:
    """What one permutation shares: its namespace, the database, and the invariants' books."""

    ns: str
    dsn: str
    admin: psycopg.Connection[Any]
    #: Positions every committed call sent, per batch: each must be stored or rejected.
    sent: dict[str, set[int]] = field(default_factory=dict)
    #: Batches the invariants look at (a step adds its batch when it first names it).
    batches: set[str] = field(default_factory=set)
    #: Anything a spec's steps want to leave for its check.
    notes: dict[str, Any] = field(default_factory=dict)

    def batch(self, key: str) -> str:
        """The batch id ``key`` stands for in this permutation."""
        batch_id = f"{self.ns}-{key}"
        self.batches.add(batch_id)
        return batch_id

    def path(self, n: int | str) -> str:
        return f"/iso/{self.ns}/{n}.png"

    def record_sent(self, batch_id: str, positions: Sequence[int]) -> None:
        self.sent.setdefault(batch_id, set()).update(positions)

    def record_freed(self, batch_id: str, positions: Sequence[int] | None = None) -> None:
        """Positions a delete took away (all of the batch's when None): not lost."""
        if positions is None:
            self.sent.pop(batch_id, None)
        else:
            self.sent.get(batch_id, set()).difference_update(positions)


@dataclass
class SessionContext:
    """What a step gets: its session's connection (opened at the start, idle between
    steps unless a step left a transaction open), a pool and a DSN that carry the
    session's application_name, and the permutation's world."""

    name: str
    dsn: str
    conn: psycopg.Connection[Any]
    world: World
    _pool: ConnectionPool | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            self._pool = make_pool(self.dsn, min_size=1, max_size=2)
            self._pool.open(wait=True)
        return self._pool

    def reset(self, world: World) -> None:
        """Ready for the next permutation: no transaction left open, a live connection."""
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()
        if self.conn.closed or self.conn.broken:
            self.conn = psycopg.connect(self.dsn)
        self.world = world

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        # An invalid permutation's backends were terminated by the tester: nothing to roll back.
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()
        self.conn.close()


@dataclass(frozen=True)
class Spec:
    """Sessions and their steps, what to prepare before each permutation, what to expect after.

    ``check(world, outcome)`` holds the spec's own expectation (assertions); ``permutations``
    declares the subset to run (by step names) when all of them would be too many.
    """

    name: str
    sessions: tuple[Session, ...]
    setup: Callable[[World], None] = lambda world: None
    check: Callable[[World, Outcome], None] = lambda world, outcome: None
    permutations: tuple[tuple[str, ...], ...] | None = None
    #: Makes the database a permutation runs in, and drops it (default: the test's database).
    database: Callable[[], tuple[str, Callable[[], None]]] | None = None


@dataclass
class Outcome:
    """What a permutation did: the transcript, each step's result (or exception), and the
    order steps completed in."""

    permutation: tuple[str, ...]
    transcript: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    #: Of ``completed``, the steps that may change a batch (Step.writes), in completion order.
    writers: list[str] = field(default_factory=list)
    invalid: bool = False

    def error(self, step: str) -> BaseException | None:
        result = self.results.get(step)
        return result if isinstance(result, BaseException) else None

    def before(self, first: str, second: str) -> bool:
        """Whether step ``first`` completed before step ``second``."""
        return self.completed.index(first) < self.completed.index(second)

    def text(self) -> str:
        return "\n".join([f"permutation {' '.join(self.permutation)}", *self.transcript])


@dataclass
class Summary:
    spec: str
    run: int = 0
    invalid: int = 0
    skipped: int = 0
    outcomes: list[Outcome] = field(default_factory=list)


class InvariantBroken(AssertionError):
    """A permutation ended in a state an invariant forbids; the message holds its transcript."""


# --------------------------------------------------------------------------- sessions


class _Worker:
    """One session: a thread running its steps in order, one at a time."""

    def __init__(self, session: Session, ctx: SessionContext) -> None:
        self.session = session
        self.ctx = ctx
        self.jobs: queue.Queue[tuple[Step, Future[Any]] | None] = queue.Queue()
        self.pending: tuple[Step, Future[Any]] | None = None
        self.thread = threading.Thread(target=self._loop, name=f"iso-{session.name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            step, future = job
            try:
                future.set_result(step.run(self.ctx))
            except BaseException as exc:  # a step's error is its outcome, as in isolationtester
                future.set_exception(exc)

    def submit(self, step: Step) -> Future[Any]:
        future: Future[Any] = Future()
        self.jobs.put((step, future))
        self.pending = (step, future)
        return future

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=STEP_TIMEOUT_S)
        self.ctx.close()


class _Sessions:
    """The spec's sessions in one database: threads and connections kept from one
    permutation to the next (connecting costs more than most steps)."""

    def __init__(self, spec: Spec, dsn: str, tag: str) -> None:
        self.tag = tag
        self.workers: dict[str, _Worker] = {}
        for session in spec.sessions:
            where = make_conninfo(dsn, application_name=_app_name(tag, session.name))
            ctx = SessionContext(session.name, where, psycopg.connect(where), World("", dsn, None))  # type: ignore[arg-type]
            self.workers[session.name] = _Worker(session, ctx)

    def names(self, worker: _Worker) -> list[str]:
        return [_app_name(self.tag, worker.session.name), *worker.session.app_names]

    def begin(self, world: World) -> None:
        for worker in self.workers.values():
            worker.ctx.reset(world)

    def end(self, admin: psycopg.Connection[Any]) -> None:
        """After a permutation: steps still waiting (an invalid permutation) are ended with
        every backend of the sessions, then awaited."""
        stuck = [w for w in self.workers.values() if w.pending is not None]
        if not stuck:
            return
        for worker in self.workers.values():
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = ANY (%s)",
                [self.names(worker)],
            )
        for worker in stuck:
            assert worker.pending is not None
            with contextlib.suppress(BaseException):
                worker.pending[1].result(timeout=STEP_TIMEOUT_S)
            worker.pending = None
            worker.ctx.close()  # its pool's connections were terminated too
            worker.ctx._pool = None

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()


def _app_name(ns: str, session: str) -> str:
    return f"iso {ns} {session}"


def _blockers(admin: psycopg.Connection[Any], app_names: list[str]) -> set[str]:
    """The application names of the backends blocking any backend of a session ('' when unnamed).

    Only this database's backends: tests of others run on the same server.
    """
    rows = admin.execute(
        "SELECT coalesce(b.application_name, '') FROM pg_stat_activity a"
        " CROSS JOIN LATERAL unnest(pg_blocking_pids(a.pid)) AS w (pid)"
        " LEFT JOIN pg_stat_activity b ON b.pid = w.pid"
        " WHERE a.datname = current_database() AND a.application_name = ANY (%s)",
        [app_names],
    ).fetchall()
    return {row[0] for row in rows}


class _Permutation:
    def __init__(self, spec: Spec, world: World, order: tuple[str, ...], sessions: _Sessions) -> None:
        self.spec, self.world = spec, world
        self.outcome = Outcome(order)
        self.owner = {step.name: s.name for s in spec.sessions for step in s.steps}
        self.steps = {step.name: step for s in spec.sessions for step in s.steps}
        self.workers = sessions.workers
        self._names = sessions.names

    def _log(self, line: str) -> None:
        self.outcome.transcript.append(line)

    def _finish(self, worker: _Worker) -> None:
        assert worker.pending is not None
        step, future = worker.pending
        worker.pending = None
        exc = future.exception()
        self.outcome.results[step.name] = exc if exc is not None else future.result()
        self.outcome.completed.append(step.name)
        if step.writes and exc is None:
            self.outcome.writers.append(step.name)
        self._log(f"step {step.name}: done" if exc is None else f"step {step.name}: ERROR {exc!r:.300}")

    def _settle(self, worker: _Worker) -> bool:
        """Wait until the worker's step completes (True) or blocks on a lock (False)."""
        assert worker.pending is not None
        step, future = worker.pending
        names = self._names(worker)
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            try:
                future.result(timeout=POLL_S)
            except TimeoutError:
                pass
            except BaseException:
                pass  # the step's error is read in _finish
            if future.done():
                self._finish(worker)
                return True
            if _blockers(self.world.admin, names):
                return False
            if time.monotonic() > deadline:
                raise AssertionError(f"step {step.name} neither completed nor waited for a lock")

    def _settle_waiting(self) -> None:
        for worker in self.workers.values():
            if worker.pending is not None:
                self._settle(worker)

    def _await(self, worker: _Worker) -> bool:
        """Await a waiting step; False when it waits only for idle sessions (never ends)."""
        assert worker.pending is not None
        deadline = time.monotonic() + AWAIT_TIMEOUT_S
        idle_seen = 0
        while not self._settle(worker):
            blockers = _blockers(self.world.admin, self._names(worker))
            running = {
                name
                for w in self.workers.values()
                if w.pending is not None and w is not worker
                for name in self._names(w)
            }
            # Seen twice, some time apart: a backend that just released its lock may still
            # be listed for an instant (a step returns before its backend is done exiting).
            idle_seen = 0 if blockers & running else idle_seen + 1
            if idle_seen >= IDLE_CHECKS or time.monotonic() > deadline:
                return False
            time.sleep(IDLE_PAUSE_S if idle_seen else 0)
            self._settle_waiting()
        return True

    def run(self) -> Outcome:
        for index, name in enumerate(self.outcome.permutation):
            worker = self.workers[self.owner[name]]
            if worker.pending is not None and not self._await(worker):
                return self._invalid(index)
            worker.submit(self.steps[name])
            if not self._settle(worker):
                self._log(f"step {name}: <waiting ...>")
            self._settle_waiting()
        for worker in self.workers.values():
            if worker.pending is not None and not self._await(worker):
                return self._invalid(len(self.outcome.permutation))
        return self.outcome

    def _invalid(self, index: int) -> Outcome:
        self.outcome.invalid = True
        self.outcome.permutation = self.outcome.permutation[: index + 1]
        self._log("invalid permutation detected: a step waits for sessions that have nothing left to run")
        return self.outcome


# --------------------------------------------------------------------------- invariants


def _counts(admin: psycopg.Connection[Any], batch_id: str) -> dict[str, Any] | None:
    row = admin.execute(
        "SELECT b.completed_images, b.failed_images, b.status::text, b.totals_stale,"
        " coalesce(b.declared_images, b.total_images), b.total_images,"
        " rc.completed, rc.failed + rc.rejected, rc.rejected,"
        " loader_batch_status(coalesce(b.declared_images, b.total_images), rc.completed,"
        "                     rc.failed + rc.rejected, b.status)::text"
        " FROM batch_executions b, loader_recount(b.batch_id::text) rc WHERE b.batch_id = %s",
        [batch_id],
    ).fetchone()
    if row is None:
        return None
    keys = ("completed", "failed", "status", "stale", "declared", "total", "rc_completed", "rc_failed",
            "rc_rejected", "rc_status")  # fmt: skip
    return dict(zip(keys, row, strict=True))


def _held_positions(admin: psycopg.Connection[Any], batch_id: str) -> set[int]:
    """Positions holding an input: a stored image (chain with its OCR row) or an open reject."""
    rows = admin.execute(
        "SELECT c.position FROM chain_executions c JOIN ocr_executions o ON o.chain_id = c.chain_id"
        " WHERE c.batch_id = %(b)s AND c.position IS NOT NULL"
        " UNION SELECT position FROM load_rejects WHERE batch_id = %(b)s AND resolved_at IS NULL",
        {"b": batch_id},
    ).fetchall()
    return {r[0] for r in rows}


def _unplaced(admin: psycopg.Connection[Any], batch_id: str) -> int:
    """Images of the batch at no position (stored by other writers)."""
    row = admin.execute(
        "SELECT count(*) FROM chain_executions c JOIN ocr_executions o ON o.chain_id = c.chain_id"
        " WHERE c.batch_id = %s AND c.position IS NULL",
        [batch_id],
    ).fetchone()
    assert row is not None
    return int(row[0])


def _figures(p: Any) -> tuple[Any, ...]:
    return (str(p.status), p.total_images, p.completed_images, p.failed_images, p.rejected_images)


def check_invariants(world: World, outcome: Outcome) -> None:
    """What every permutation must end with, for every batch it named."""
    for batch_id in sorted(world.batches):
        counts = _counts(world.admin, batch_id)
        if counts is None:
            lost = world.sent.get(batch_id)
            assert not lost, f"batch {batch_id} is gone, but no delete took positions {sorted(lost)}"
            continue
        recounted = (counts["rc_completed"], counts["rc_failed"], counts["rc_status"])
        if not counts["stale"]:
            stored = (counts["completed"], counts["failed"], counts["status"])
            assert stored == recounted, f"{batch_id}: stored counters {stored} != recount {recounted}"
        progress = get_progress(world.admin, batch_id)
        read = (progress.completed_images, progress.failed_images, str(progress.status))
        assert read == recounted, f"{batch_id}: get_progress {read} != recount {recounted}"
        held = _held_positions(world.admin, batch_id)
        missing = world.sent.get(batch_id, set()) - held
        assert not missing, f"{batch_id}: positions {sorted(missing)} were sent and are lost"
        if counts["rc_status"] in ("SUCCESS", "FAILURE"):
            unplaced = _unplaced(world.admin, batch_id)
            assert len(held) + unplaced >= counts["declared"], (
                f"{batch_id}: {counts['rc_status']} with {len(held)} of {counts['declared']} positions held"
            )
    _check_last_report(world, outcome)


def _check_last_report(world: World, outcome: Outcome) -> None:
    """The report of a call that was the last to change its batch says what get_progress says."""
    if not outcome.writers:
        return
    last = outcome.results[outcome.writers[-1]]
    if isinstance(last, LoadReport):
        try:
            now = get_progress(world.admin, last.batch_id)
        except BatchNotFoundError:
            return
        said, read = _figures(last.progress), _figures(now)
        assert said == read, f"the last report ({outcome.writers[-1]}) says {said}, get_progress {read}"


# --------------------------------------------------------------------------- running


def interleavings(sessions: Sequence[Session]) -> Iterator[tuple[str, ...]]:
    """Every merge of the sessions' step lists that keeps each session's order."""
    slots = [s.name for s in sessions for _ in s.steps]
    seen: set[tuple[str, ...]] = set()
    for order in itertools.permutations(slots):
        if order in seen:
            continue
        seen.add(order)
        cursors = {s.name: iter(s.steps) for s in sessions}
        yield tuple(next(cursors[name]).name for name in order)


def count_interleavings(sessions: Sequence[Session]) -> int:
    """(n1 + n2 + ...)! / (n1! n2! ...)"""
    total = sum(len(s.steps) for s in sessions)
    count = 1
    for s in sessions:
        count *= math.comb(total, len(s.steps))
        total -= len(s.steps)
    return count


def run_spec(spec: Spec, dsn: str, *, tag: str = "") -> Summary:
    """Run every permutation of ``spec`` (or its declared ones); raise InvariantBroken with
    the transcript of the first permutation whose end state breaks an invariant or the
    spec's expectation."""
    summary = Summary(spec.name)
    invalid_prefixes: list[tuple[str, ...]] = []
    orders = spec.permutations or tuple(interleavings(spec.sessions))
    tag = tag or spec.name
    shared = None if spec.database else _Sessions(spec, dsn, tag)
    try:
        for index, order in enumerate(orders):
            if any(order[: len(p)] == p for p in invalid_prefixes):
                summary.skipped += 1
                continue
            where, drop = spec.database() if spec.database else (dsn, lambda: None)
            sessions = shared or _Sessions(spec, where, tag)
            try:
                with psycopg.connect(where, autocommit=True) as admin:
                    world = World(f"{tag}{index}", where, admin)
                    outcome = _run_one(spec, world, order, sessions)
                    summary.outcomes.append(outcome)
                    if outcome.invalid:
                        summary.invalid += 1
                        invalid_prefixes.append(outcome.permutation)
                        continue
                    summary.run += 1
                    _check(spec, world, outcome)
            finally:
                if sessions is not shared:
                    sessions.stop()
                drop()
    finally:
        if shared is not None:
            shared.stop()
    return summary


def _check(spec: Spec, world: World, outcome: Outcome) -> None:
    try:
        check_invariants(world, outcome)
        spec.check(world, outcome)
    except Exception as broken:  # an assertion, or a check that could not even read the state
        raise InvariantBroken(f"{spec.name}: {broken}\n{outcome.text()}") from broken


def _run_one(spec: Spec, world: World, order: tuple[str, ...], sessions: _Sessions) -> Outcome:
    spec.setup(world)
    sessions.begin(world)
    try:
        return _Permutation(spec, world, order, sessions).run()
    finally:
        sessions.end(world.admin)
