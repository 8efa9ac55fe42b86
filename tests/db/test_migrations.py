"""Schema upgrades: numbered migrations, one transaction each, checked against a fresh install."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from helpers.checks import TABLES, assert_totals_match_recount, snapshot_by_column, stored_totals

from loader import queries, save_batch
from loader.cli import cli
from loader.connection import SCHEMA_VERSION
from loader.datagen import make_batch
from loader.errors import LoaderError, SchemaVersionError
from loader.save.validate import chain_id_for
from loader.schema.apply import apply_schema
from loader.schema.check import describe_deployed
from loader.schema.migrate import MigrationError, deployed_version, load, upgrade

# schema.sql as it was at version 1, before migration 0002 existed.
SCHEMA_V1 = Path(__file__).parent / "data" / "schema_v1.sql"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def deploy_v1(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_V1.read_bytes())


def fill_v1(dsn: str) -> list[dict[str, Any]]:
    """What a version-1 loader left behind: a finished batch (one image failed, one input
    rejected) and a registered batch still waiting for its images."""
    images = make_batch(3, prefix="old")
    # Image 1 arrived as an upstream failure, so replaying these inputs is a no-op.
    images[1].update(status="failed", error="OCR engine timeout after 30s", text_boxes=[])
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO batch_executions (batch_id, total_images, completed_images, failed_images, status)"
            " VALUES ('old', 4, 2, 2, 'SUCCESS'), ('waiting', 10, 0, 0, 'PENDING')"
        )
        for n, image in enumerate(images):
            ok = n != 1
            chain = chain_id_for("old", image["image_path"])
            conn.execute(
                "INSERT INTO chain_executions (chain_id, batch_id, status, total_tasks, completed_tasks,"
                " failed_tasks) VALUES (%s, 'old', %s, 1, %s, %s)",
                [chain, "SUCCESS" if ok else "FAILURE", int(ok), int(not ok)],
            )
            (ocr_id,) = conn.execute(
                "INSERT INTO ocr_executions (chain_id, image_path, public_path, status, error)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                [
                    chain,
                    image["image_path"],
                    image["public_path"],
                    "success" if ok else "failed",
                    None if ok else "OCR engine timeout after 30s",
                ],
            ).fetchone()
            for pos, box in enumerate(image["text_boxes"] if ok else []):
                conn.execute(
                    "INSERT INTO ocr_text_boxes (ocr_execution_id, position, text, confidence, bbox)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [ocr_id, pos, box["text"], box["confidence"], json.dumps(box["bbox"])],
                )
        conn.execute(
            "INSERT INTO load_rejects (batch_id, position, reason, raw, raw_sha256)"
            " VALUES ('old', 3, 'not valid JSON', '\\x7b7b'::bytea, sha256('\\x7b7b'::bytea))"
        )
        conn.execute(
            "INSERT INTO task_logs (task_id, task_name, chain_id, status)"
            " VALUES ('t-1', 'ocr.run', %s, 'SUCCESS')",
            [chain_id_for("old", images[0]["image_path"])],
        )
    return images


def test_migrations_are_numbered_without_gaps_up_to_the_schema_version() -> None:
    migrations = load()

    assert [m.version for m in migrations] == list(range(2, SCHEMA_VERSION + 1))
    for mig in migrations:
        assert mig.name.startswith(f"{mig.version:04d}_")
        assert "\nBEGIN;\n" in mig.sql and mig.sql.rstrip().endswith("COMMIT;")
        assert f"VALUES ({mig.version}, " in mig.sql  # records its own version


def test_v1_database_with_data_upgrades_to_exactly_a_fresh_install_and_keeps_its_data(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    old, fresh = new_database(), new_database()
    deploy_v1(old)
    images = fill_v1(old)
    apply_schema(fresh)
    with psycopg.connect(old, autocommit=True) as db:
        before = snapshot_by_column(db, (*TABLES, "task_logs"))

    # Before: the loader refuses the old schema and says what to do.
    with psycopg.connect(old) as conn, pytest.raises(SchemaVersionError, match="loader schema upgrade"):
        save_batch(conn, "new", make_batch(1, prefix="new"))
    drift = run("schema", "check", "--dsn", old)
    assert drift.exit_code == 3
    assert "- index batch_executions.batch_executions_unfinished_idx: CREATE INDEX" in drift.stdout
    assert f"~ version\n      package:  {SCHEMA_VERSION}\n      database: 1\n" in drift.stdout
    assert "hint: `loader schema upgrade`" in drift.stdout

    upgraded = run("schema", "upgrade", "--dsn", old)

    assert upgraded.exit_code == 0, upgraded.stderr
    assert "applied 0002_unfinished_batches_index.sql" in upgraded.stdout
    assert "applied 0003_application_models.sql" in upgraded.stdout
    assert "applied 0004_input_identity.sql" in upgraded.stdout
    assert f"schema upgraded from version 1 to {SCHEMA_VERSION}" in upgraded.stdout
    assert run("schema", "check", "--dsn", old).exit_code == 0
    assert describe_deployed(old) == describe_deployed(fresh)
    with psycopg.connect(old, autocommit=True) as db, psycopg.connect(fresh, autocommit=True) as other:
        after = snapshot_by_column(db, (*TABLES, "task_logs"))
        # Version 3: the reject (a line that was not JSON) is still open ...
        for reject in after["load_rejects"]:
            assert reject.pop("resolved_at") is None and reject.pop("resolved_by") is None
            # Version 5: older than version 4, its position may be call-relative.
            assert reject.pop("legacy_position") is True
        # Version 4: every batch declared at its total and marked for a recount (version 3
        # cannot tell whether another writer touched it); no position known; no model said.
        for batch in after["batch_executions"]:
            assert batch.pop("declared_images") == batch["total_images"] and batch.pop("totals_stale") is True
            # Version 5: no outside write counted yet (the mark alone makes the next merge recount).
            assert batch.pop("outside_writes") == 0
        for chain in after["chain_executions"]:
            assert chain.pop("position") is None
        for ocr in after["ocr_executions"]:
            assert ocr.pop("model_version") is None
            # Version 5: each stored result is its image's first.
            assert ocr.pop("result_version") == 1
        # ... and the task log links its chain by id instead of chain_id.
        (log_after,), (log_before,) = after["task_logs"], before["task_logs"]
        chain = log_before.pop("chain_id")
        assert db.execute(
            "SELECT chain_id FROM chain_executions WHERE id = %s", [log_after.pop("chain_execution_id")]
        ).fetchone() == (chain,)
        assert after == before
        versions = "SELECT version, description FROM loader_schema_version ORDER BY version"
        assert db.execute(versions).fetchall() == other.execute(versions).fetchall()

    # After: the loader writes into it, old rows included in the totals.
    lines = [json.dumps(r) for r in make_batch(10, prefix="waiting")]
    (tmp_path / "waiting.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "old.jsonl").write_text("\n".join(json.dumps(r) for r in images) + "\n")
    waiting = run("load", str(tmp_path / "waiting.jsonl"), "-b", "waiting", "--dsn", old)
    replay = run("load", str(tmp_path / "old.jsonl"), "-b", "old", "--dsn", old)
    assert waiting.exit_code == 0 and replay.exit_code == 0, waiting.stderr + replay.stderr
    assert "unchanged 3" in replay.stdout
    with psycopg.connect(old, autocommit=True) as db:
        assert stored_totals(db, "waiting") == (10, 10, 0, "SUCCESS")
        assert stored_totals(db, "old") == (4, 2, 2, "SUCCESS")
        assert_totals_match_recount(db, "waiting")
        assert_totals_match_recount(db, "old")


def test_the_unfinished_listing_is_answered_by_the_new_index(dsn: str, db: psycopg.Connection[Any]) -> None:
    # The partial index serves the query only if their predicates agree.
    db.execute("SET enable_seqscan = off")
    plan = db.execute("EXPLAIN " + queries.get("batch_list_unfinished"), {"limit": 20}).fetchall()

    assert "batch_executions_unfinished_idx" in "\n".join(row[0] for row in plan)


def test_upgrading_an_up_to_date_database_changes_nothing(dsn: str, db: psycopg.Connection[Any]) -> None:
    before = describe_deployed(dsn)

    result = run("schema", "upgrade", "--dsn", dsn)
    dry = run("schema", "upgrade", "--dry-run", "--dsn", dsn)

    assert result.exit_code == 0 and f"schema version {SCHEMA_VERSION} is current" in result.stdout
    assert dry.exit_code == 0 and "nothing to apply" in dry.stdout
    assert describe_deployed(dsn) == before


def test_dry_run_lists_the_pending_migrations_without_applying_them(new_database: Callable[[], str]) -> None:
    old = new_database()
    deploy_v1(old)

    result = run("schema", "upgrade", "--dry-run", "--dsn", old)

    assert result.exit_code == 0
    assert result.stdout.startswith("would apply 0002_unfinished_batches_index.sql: index the unfinished")
    with psycopg.connect(old) as conn:
        assert deployed_version(conn) == 1


def test_schema_sql_refuses_a_v1_database_and_points_to_the_upgrade(new_database: Callable[[], str]) -> None:
    old = new_database()
    deploy_v1(old)
    fill_v1(old)
    before = describe_deployed(old)

    with pytest.raises(LoaderError, match=r"holds schema version 1.*loader schema upgrade"):
        apply_schema(old)
    result = run("schema", "apply", "--dsn", old)

    assert result.exit_code == 1
    assert "loader schema upgrade" in result.stderr and len(result.stderr.splitlines()) == 1
    assert describe_deployed(old) == before


def test_a_failing_migration_is_rolled_back_whole(new_database: Callable[[], str], tmp_path: Path) -> None:
    old = new_database()
    deploy_v1(old)
    shipped = load()[0].sql
    # The real migration, with a failure after its index and before its version row.
    broken = shipped.replace(
        "INSERT INTO loader_schema_version", "SELECT 1 / 0;\nINSERT INTO loader_schema_version"
    )
    (tmp_path / "0002_broken.sql").write_text(
        broken.replace("-- migration 0002:", "-- migration 0002: broken,", 1)
    )

    with pytest.raises(MigrationError, match=r"rolled back .* stays at version 1"):
        upgrade(old, target=2, migrations=load(tmp_path))

    with psycopg.connect(old) as conn:
        assert deployed_version(conn) == 1
        assert conn.execute("SELECT to_regclass('batch_executions_unfinished_idx')").fetchone() == (None,)


def test_the_migration_file_also_runs_as_plain_sql_and_refuses_a_second_run(
    new_database: Callable[[], str],
) -> None:
    old = new_database()
    deploy_v1(old)
    migrations = load()

    with psycopg.connect(old, autocommit=True) as conn:
        for migration in migrations:
            conn.execute(migration.sql.encode())  # what psql -f does
        with pytest.raises(psycopg.errors.RaiseException, match=f"holds version {SCHEMA_VERSION}"):
            conn.execute(migrations[-1].sql.encode())
    assert run("schema", "check", "--dsn", old).exit_code == 0


def test_concurrent_upgrades_apply_each_migration_once(new_database: Callable[[], str]) -> None:
    old = new_database()
    deploy_v1(old)
    results: list[tuple[int, list[Any]] | BaseException] = []

    def work() -> None:
        try:
            results.append(upgrade(old))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert all(isinstance(r, tuple) for r in results), results
    applied = [m.version for r in results if isinstance(r, tuple) for m in r[1]]
    assert sorted(applied) == list(range(2, SCHEMA_VERSION + 1))
    assert run("schema", "check", "--dsn", old).exit_code == 0


def test_upgrade_and_check_of_a_database_without_schema_say_to_apply_it(
    new_database: Callable[[], str],
) -> None:
    blank = new_database()

    for args in (["schema", "upgrade"], ["schema", "check"]):
        result = run(*args, "--dsn", blank)
        assert result.exit_code == 1
        assert "loader schema apply" in result.stderr


def test_schema_sql_prints_the_migrations_for_a_dba() -> None:
    result = run("schema", "sql", "--upgrade-from", "1")

    assert result.exit_code == 0
    assert result.stdout == "".join(f"-- ===== {m.name} =====\n{m.sql}" for m in load())


def test_upgrade_to_v3_resolves_rejects_that_a_later_image_already_stored(
    new_database: Callable[[], str],
) -> None:
    old = new_database()
    deploy_v1(old)
    upgrade(old, target=2)
    image = make_batch(1, prefix="fixed")[0]
    with psycopg.connect(old) as conn:
        conn.execute(
            "INSERT INTO batch_executions (batch_id, total_images, failed_images, status)"
            " VALUES ('fixed', 1, 1, 'FAILURE')"
        )
        conn.execute(
            "INSERT INTO load_rejects (batch_id, position, image_path, reason, raw, raw_sha256)"
            " VALUES ('fixed', 0, %s, 'public_path used by another image', '\\x7b7d', sha256('\\x7b7d'))",
            [image["image_path"]],
        )
    # The fixed input arrives in a later transaction: stored, and counted on top (the v2 flaw).
    with psycopg.connect(old) as conn:
        chain = chain_id_for("fixed", image["image_path"])
        conn.execute(
            "INSERT INTO chain_executions (chain_id, batch_id, status) VALUES (%s, 'fixed', 'SUCCESS')",
            [chain],
        )
        conn.execute(
            "INSERT INTO ocr_executions (chain_id, image_path, status) VALUES (%s, %s, 'success')",
            [chain, image["image_path"]],
        )
        conn.execute("UPDATE batch_executions SET completed_images = 1 WHERE batch_id = 'fixed'")

    upgrade(old)

    with psycopg.connect(old, autocommit=True) as db:
        resolved = db.execute(
            "SELECT r.resolved_at = o.created_at, r.resolved_by = o.id FROM load_rejects r"
            " JOIN ocr_executions o ON o.image_path = r.image_path"
        ).fetchall()
        assert resolved == [(True, True)]
        assert stored_totals(db, "fixed") == (1, 1, 0, "SUCCESS")
        assert_totals_match_recount(db, "fixed")
