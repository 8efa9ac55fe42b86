"""save_batch in two steps, for callers that judge one chunk while the database stores another.

``judge`` is the pure-Python half of save_batch (parsing and validating the
inputs, no database); ``save_judged`` is the other half (one transaction).
Running ``judge`` for chunk k+1 in a thread while ``save_judged`` stores chunk
k overlaps the two (loader.chunks does the same for lines of a file). The outcome,
errors and transaction are exactly those of save_batch on the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from loader.connection import Connectable
from loader.errors import ConfigurationError
from loader.models import LoadReport
from loader.save import save_prepared
from loader.settings import Settings
from loader.validate import Input, Prepared, call_digest, prepare

#: What ``judge`` returns: opaque, for ``save_judged`` with the same batch_id only.
Judged: TypeAlias = Prepared


def judge(batch_id: str, results: Iterable[Input], position_offset: int = 0) -> Judged:
    """Judge ``results`` (OCRResult objects, dicts or raw JSON lines) as save_batch would; no database."""
    if isinstance(results, str | bytes):
        raise ConfigurationError("results must be an iterable of inputs, not a single str/bytes")
    if not isinstance(position_offset, int) or isinstance(position_offset, bool) or position_offset < 0:
        raise ConfigurationError(f"position_offset must be a non-negative integer, got {position_offset!r}")
    inputs = list(results)
    judged = prepare(batch_id, inputs, position_offset)
    judged.digest = call_digest(enumerate(inputs, position_offset))
    return judged


def save_judged(
    pool_or_conn: Connectable,
    batch_id: str,
    judged: Judged,
    *,
    total_images: int | None = None,
    settings: Settings | None = None,
    repair: bool = False,
    replace: bool = False,
) -> LoadReport:
    """Store what ``judge(batch_id, ...)`` returned, in one transaction; duration_s covers the storing.

    ``settings``, ``repair``, ``replace``: as save_batch's (no settings: ``Settings()``,
    read from the environment at the call). A judged call is a chunk of its batch:
    without ``total_images`` the batch must exist (BatchNotFoundError otherwise), so
    a load never re-creates a batch deleted while it runs; its positions must lie
    inside the batch's declared total (PositionBeyondTotalError).
    """
    return save_prepared(
        pool_or_conn,
        batch_id,
        judged,
        total_images=total_images,
        settings=settings,
        repair=repair,
        replace=replace,
    )
