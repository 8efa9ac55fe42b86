"""Result history: the OCR results a re-OCR, a repair or a rollback replaced; read, compared, restored.

The merge keeps each replaced result in ``ocr_result_history`` in the same
statement that replaces it (loader/sql/save.sql, ``kept_results``); this module
reads it (loader/sql/history.sql). An image's results are numbered 1, 2, ...
(``ocr_executions.result_version`` is the current one's number). See docs/history.md.

    from loader.lifecycle import history
    history.image_history(pool, "/images/a.png")      # every result, newest first
    history.compare(pool, "B1", from_model="ocr-v1", to_model="ocr-v2")
    history.rollback(pool, "B1")                       # each image back to its previous result
    history.prune_history(pool, keep=3)                # retention
"""

from __future__ import annotations

import hashlib
import sys
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import class_row, dict_row

from loader import queries
from loader.batch_ids import check_batch_id
from loader.connection import Connectable, connection
from loader.errors import ConfigurationError, quoted, translating
from loader.fields import MAX_BBOX_POINTS, MAX_TEXT_CHARS, REPLACED
from loader.models import LoadReport
from loader.progress.read import get_progress
from loader.save.call import save_judged
from loader.save.validate import judge_call
from loader.settings import Limits, Settings

__all__ = [
    "BatchVersion",
    "ChangedImage",
    "Comparison",
    "ResultVersion",
    "Rollback",
    "batch_versions",
    "compare",
    "image_history",
    "prune_history",
    "rollback",
    "rollback_plan",
]

# How many images `compare` lists by default among those that changed most.
DEFAULT_TOP = 10


def _restoring() -> Limits:
    """The limits a rollback judges with: the declared ones only. It restores results the
    batch held, which limits tightened since (LOADER_MAX_BOXES, ...) must not fail."""
    return Limits(max_boxes=sys.maxsize, max_text_chars=MAX_TEXT_CHARS, max_bbox_points=MAX_BBOX_POINTS)


class ResultVersion(NamedTuple):
    """One result of an image: the current one (``current``) or one the loader replaced."""

    image_path: str
    batch_id: str
    #: The image's position in its batch (None for an image stored at no position).
    position: int | None
    #: 1 for the image's first result, one more with every replace.
    version: int
    current: bool
    model_version: str | None
    status: str
    error: str | None
    public_path: str | None
    #: The boxes in reading order: ``{"text", "confidence", "bbox"}`` each.
    boxes: list[dict[str, Any]]
    stored_at: datetime
    #: When, by which call (its ledger digest) and in what kind of call it was replaced; None if current.
    replaced_at: datetime | None
    replaced_by: bytes | None
    replaced_in: str | None


class BatchVersion(NamedTuple):
    """A batch's results of one model version: held now, and kept from before."""

    model_version: str | None
    current_images: int
    kept_results: int
    kept_images: int
    last_stored: datetime | None
    last_replaced: datetime | None


class ChangedImage(NamedTuple):
    """One image among those that changed most between the two sides of a comparison."""

    image_path: str
    from_version: int
    to_version: int
    from_model: str | None
    to_model: str | None
    from_status: str
    to_status: str
    from_boxes: int
    to_boxes: int
    #: Reading positions whose text differs (or that only one side has).
    changed_boxes: int
    #: Mean confidence of the "to" boxes minus that of the "from" ones (None if a side has no box).
    confidence_change: float | None


class Comparison(NamedTuple):
    """Two results of each image of a batch compared (``compare``)."""

    batch_id: str
    #: The model versions asked for (None: the current result, and the one it replaced).
    from_model: str | None
    to_model: str | None
    batch_images: int
    compared: int
    unchanged: int
    success_to_failed: int
    failed_to_success: int
    text_changed: int
    boxes_added: int
    boxes_removed: int
    from_mean_confidence: float | None
    to_mean_confidence: float | None
    #: The model versions found on each side.
    from_models: list[str | None]
    to_models: list[str | None]
    most_changed: list[ChangedImage]

    @property
    def confidence_change(self) -> float | None:
        if self.from_mean_confidence is None or self.to_mean_confidence is None:
            return None
        return self.to_mean_confidence - self.from_mean_confidence

    def as_json(self) -> dict[str, Any]:
        data = self._asdict()
        data["confidence_change"] = self.confidence_change
        data["most_changed"] = [image._asdict() for image in self.most_changed]
        return data


class _Target(NamedTuple):
    image_path: str
    position: int | None
    current_version: int
    current_model: str | None
    version: int
    model_version: str | None
    #: The kept result's columns by name: its fields (loader/fields.py, REPLACED) among them.
    kept: dict[str, Any]
    boxes: list[dict[str, Any]]


class Rollback(NamedTuple):
    """What ``rollback`` restored: the replace call's report (None: nothing to restore), and which results."""

    report: LoadReport | None
    #: Model version restored -> images (empty when there was nothing to restore).
    restored: dict[str | None, int]


def image_history(pool_or_conn: Connectable, image_path: str) -> list[ResultVersion]:
    """Every result of the image stored at ``image_path``, newest (the current one) first; [] if none."""
    if not isinstance(image_path, str) or not image_path:
        raise ConfigurationError("image_path must be a non-empty string")
    with connection(pool_or_conn) as conn, translating("reading an image's results"), conn.transaction():
        cur = conn.cursor(row_factory=class_row(ResultVersion))
        return cur.execute(queries.get("image_versions"), {"image_path": image_path}).fetchall()


def batch_versions(pool_or_conn: Connectable, batch_id: str) -> list[BatchVersion]:
    """A batch's results by model version, newest first. Raises BatchNotFoundError."""
    batch_id = check_batch_id(batch_id)
    with connection(pool_or_conn) as conn:
        get_progress(conn, batch_id)
        with translating(f"reading the results of batch {quoted(batch_id)}"), conn.transaction():
            cur = conn.cursor(row_factory=class_row(BatchVersion))
            return cur.execute(queries.get("batch_versions"), {"batch_id": batch_id}).fetchall()


def compare(
    pool_or_conn: Connectable,
    batch_id: str,
    *,
    from_model: str | None = None,
    to_model: str | None = None,
    top: int = DEFAULT_TOP,
) -> Comparison:
    """Compare two results of each image of a batch, in one SQL statement.

    The "to" side of an image is its newest result of model ``to_model`` (by
    default its current result), the "from" side its newest result of model
    ``from_model`` older than that (by default the result just before it).
    Images holding both are compared; ``top`` of them that changed most are listed.
    Raises BatchNotFoundError.
    """
    batch_id = check_batch_id(batch_id)
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise ConfigurationError(f"top must be a non-negative integer, got {top!r}")
    params = {"batch_id": batch_id, "from": from_model, "to": to_model, "top": top}
    with connection(pool_or_conn) as conn:
        get_progress(conn, batch_id)
        with translating(f"comparing the results of batch {quoted(batch_id)}"), conn.transaction():
            # Its cost estimate (an index probe per image) crosses JIT's threshold, whose
            # compiling then costs more than it saves.
            conn.execute("SET LOCAL jit = off")
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(queries.get("compare_versions"), params).fetchone()
    assert row is not None, "an aggregate returns one row"
    # The row's columns are Comparison's fields by name (loader/sql/history.sql).
    row["most_changed"] = [ChangedImage(**image) for image in row["most_changed"]]
    return Comparison(batch_id=batch_id, from_model=from_model, to_model=to_model, **row)


def _inputs(targets: list[_Target]) -> list[tuple[int, dict[str, Any]]]:
    """The kept results as inputs of a replace call, each at its image's position.

    An image at no position (stored by another writer) takes a free one past
    the batch's last: a replace judges an input by its image, never by its place.
    """
    free = max((t.position for t in targets if t.position is not None), default=-1) + 1
    inputs = []
    for target in targets:
        if target.position is None:
            position, free = free, free + 1
        else:
            position = target.position
        result = {
            "image_path": target.image_path,
            **{f.name: target.kept[f.name] for f in REPLACED},
            "text_boxes": target.boxes,
        }
        inputs.append((position, result))
    return sorted(inputs, key=lambda item: item[0])


def _targets(conn: psycopg.Connection[Any], batch_id: str, to_model: str | None) -> list[_Target]:
    get_progress(conn, batch_id)
    with translating(f"reading the results to restore in batch {quoted(batch_id)}"), conn.transaction():
        cur = conn.cursor(row_factory=class_row(_Target))
        return list(cur.execute(queries.get("rollback_targets"), {"batch_id": batch_id, "to": to_model}))


def _by_model(targets: list[_Target]) -> dict[str | None, int]:
    restored: dict[str | None, int] = {}
    for target in targets:
        restored[target.model_version] = restored.get(target.model_version, 0) + 1
    return restored


def rollback_plan(
    pool_or_conn: Connectable, batch_id: str, *, to_model: str | None = None
) -> dict[str | None, int]:
    """What ``rollback`` with these arguments would restore now (model version -> images); writes nothing."""
    batch_id = check_batch_id(batch_id)
    with connection(pool_or_conn) as conn:
        return _by_model(_targets(conn, batch_id, to_model))


def rollback(
    pool_or_conn: Connectable,
    batch_id: str,
    *,
    to_model: str | None = None,
    settings: Settings | None = None,
) -> Rollback:
    """Restore each image of a batch to its previous result, or to its newest result of model ``to_model``.

    The restored results are stored as one re-OCR call (``replace=True``, one
    transaction): counted in the report's ``replaced``, the batch's totals and
    event follow, and the results they replace are kept in turn (history is
    append-only). Images without a kept result (or already holding ``to_model``)
    are left alone. The same rollback of the same state sent again is a replay.
    Raises BatchNotFoundError.
    """
    batch_id = check_batch_id(batch_id)
    with connection(pool_or_conn) as conn:
        targets = _targets(conn, batch_id, to_model)
        if not targets:
            return Rollback(None, {})
        inputs = _inputs(targets)
        judged = judge_call(batch_id, inputs, limits=_restoring())
        # The ledger's key: the restored results, and the versions they replace, so a
        # later rollback to the same results (after another re-OCR) is a new call.
        state = b"".join(t.current_version.to_bytes(4, "little") for t in targets)
        judged.digest = hashlib.sha256(b"rollback\0" + judged.digest + state).digest()
        report = save_judged(conn, batch_id, judged, replace=True, settings=settings)
    return Rollback(report, _by_model(targets))


def prune_history(
    pool_or_conn: Connectable,
    *,
    keep: int | None = None,
    replaced_before: datetime | None = None,
    batch_id: str | None = None,
) -> dict[str, int]:
    """Retention of kept results: delete those beyond each image's newest ``keep``, and/or replaced
    before ``replaced_before`` (both given: only those both select), in ``batch_id`` or every batch.

    Current results are never touched, and version numbers go on from where they
    were. Needs the loader_admin role. Returns results deleted per batch.
    """
    if keep is None and replaced_before is None:
        raise ConfigurationError(
            "say what to delete: keep=K (newest kept per image) and/or replaced_before=DATE"
        )
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 0):
        raise ConfigurationError(f"keep must be a non-negative integer, got {keep!r}")
    if replaced_before is not None and replaced_before.tzinfo is None:
        raise ConfigurationError("replaced_before must be an aware datetime (with a time zone)")
    if batch_id is not None:
        batch_id = check_batch_id(batch_id)
    params = {"keep": keep, "before": replaced_before, "batch_id": batch_id}
    with connection(pool_or_conn) as conn, translating("pruning result history"), conn.transaction():
        deleted: dict[str, int] = {}
        for (batch,) in conn.execute(queries.get("prune_history"), params).fetchall():
            deleted[batch] = deleted.get(batch, 0) + 1
    return deleted
