"""The `loader` command line: load JSONL backfills, inspect batches and rejects, deploy the schema.

One module per command (load, status, rejects, delete, history, compare, rollback, schema,
schema adopt, demo) on a shared base (loader/cli/base.py: the group, exit statuses, common
options, connecting) and one output helper (loader/cli/output.py). Errors end as one line on stderr
and a non-zero exit status, never a traceback:
0 success, 1 error (database, input file, configuration), 2 bad usage,
3 `schema check` found differences, 130 interrupted (Ctrl-C).
"""

from loader import _interrupt
from loader.cli import (  # noqa: F401  (each registers its command)
    adopt,
    compare,
    delete,
    demo,
    history,
    load,
    rejects,
    rollback,
    schema,
    status,
)
from loader.cli.base import cli
from loader.cli.resume import DEFAULT_CHUNK_SIZE

__all__ = ["DEFAULT_CHUNK_SIZE", "cli", "main"]


def main() -> None:
    """Console-script entry point (`loader`)."""
    _interrupt.release()  # from here on, click and LoaderGroup print a Ctrl-C as one line
    cli(prog_name="loader")
