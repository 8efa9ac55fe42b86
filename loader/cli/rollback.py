"""`loader rollback`: restore a batch's previous results (or a model version's) as a new re-OCR."""

from __future__ import annotations

import click

from loader.cli import output as out
from loader.cli.base import Session, cli, common_options
from loader.errors import CliError, quoted
from loader.lifecycle.history import rollback, rollback_plan

ROLLBACK_EPILOG = """\b
Examples:
  loader rollback B1                  # each image back to the result it held before (asks first)
  loader rollback B1 --to ocr-v1 --yes
  loader rollback B1 --json --yes     # the call's report, for scripts

\b
The restored results are stored as one re-OCR call (one transaction):
counted as replaced, the batch's totals and progress event follow, and the
results they replace are kept in turn, so a rollback can itself be rolled back.
Without --to, each image with a kept result gets its newest one back; with
--to V, each image whose current result is not of model V gets its newest
result of model V back. See docs/history.md.
"""


def _models(restored: dict[str | None, int]) -> str:
    return ", ".join(f"{out.printable(m or 'none')}: {out.count(n, 'image')}" for m, n in restored.items())


@cli.command("rollback", epilog=ROLLBACK_EPILOG)
@click.argument("batch_id")
@click.option(
    "--to", "to_model", metavar="V", default=None, help="Restore each image's newest result of model V."
)
@click.option("--yes", is_flag=True, help="Do not ask first.")
@click.option("--json", "as_json", is_flag=True, help="The call's report as one JSON document.")
@common_options
def rollback_command(batch_id: str, to_model: str | None, yes: bool, as_json: bool, session: Session) -> None:
    """Restore a batch's previous results (or those of model --to) as a new re-OCR call."""
    with session.connect() as conn:
        plan = rollback_plan(conn, batch_id, to_model=to_model)
        if not plan:
            what = f"of model {quoted(to_model)}" if to_model else "kept"
            out.echo(f"batch {out.printable(batch_id)}: no result {what} to restore; nothing changed")
            return
        if not yes and not click.confirm(
            f"restore {out.count(sum(plan.values()), 'image')} of batch {quoted(batch_id)} ({_models(plan)})?"
        ):
            raise CliError("nothing restored")
        done = rollback(conn, batch_id, to_model=to_model)
    if done.report is None:
        out.echo(f"batch {out.printable(batch_id)}: nothing left to restore; nothing changed")
        return
    if as_json:
        out.echo_json(
            {
                "restored": {m or "": n for m, n in done.restored.items()},
                **done.report.model_dump(mode="json"),
            }
        )
        return
    report = done.report
    out.echo(
        f"restored {out.count(report.replaced, 'image')} ({_models(done.restored)}); "
        f"{out.n(report.refused)} refused, {out.n(report.unchanged)} unchanged"
    )
    out.echo(out.batch_line(report.progress))
