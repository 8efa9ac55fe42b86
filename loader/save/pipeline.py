"""save_batch in two steps, for callers that judge one chunk while the database stores another.

``judge`` is the pure-Python half of save_batch (parsing and validating the
inputs, no database); ``save_judged`` is the other half (one transaction).
Running ``judge`` for chunk k+1 in a thread while ``save_judged`` stores chunk
k overlaps the two (loader.save.chunks does the same for lines of a file). The outcome,
errors and transaction are exactly those of save_batch on the same inputs.
"""

from __future__ import annotations

from collections.abc import Iterable

from loader.save.call import judge_checked, save_judged
from loader.save.inputs import Input
from loader.save.validate import Judged
from loader.settings import Limits

__all__ = ["Judged", "judge", "save_judged"]


def judge(
    batch_id: str, results: Iterable[Input], position_offset: int = 0, *, limits: Limits | None = None
) -> Judged:
    """Judge ``results`` (OCRResult objects, dicts or raw JSON lines) as save_batch would; no database.

    The arguments are checked as save_batch checks them (ConfigurationError). What it
    returns is for ``save_judged`` with the same batch_id only. ``limits``: as save_batch's.
    """
    return judge_checked(batch_id, results, position_offset, now=True, limits=limits)
