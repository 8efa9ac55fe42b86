"""Tasks of the test suite's own, imported by the test workers (``-I celery_tasks``):
two that opt into the task log and one that does not."""

from __future__ import annotations

from loader.celery import app, logged


@app.task(name="tests.echo_logged", task_log=True)
def echo_logged(value: int) -> int:
    return value


@logged
@app.task(name="tests.fail_logged")
def fail_logged(message: str) -> None:
    raise ValueError(message)


@app.task(name="tests.echo_unlogged")
def echo_unlogged(value: int) -> int:
    return value
