"""The loader with its identity probes taken out of the merge: what the identity rule costs.

An experiment only (issue 21, item 4): the merge's `stage` CTE answers "nothing is
stored here, nowhere, by nobody" for every input without looking, and `seen` says
"never received". On a new batch of new images that stores exactly what the real
merge stores, so the difference in time is the probes' price. It reads the merge's
text from loader/sql/save.sql and fails loudly if the CTEs it replaces changed shape.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from approaches import Loader
from psycopg import sql

import loader.save.call as save_module
from loader import queries
from loader.copy import staging_names

# Every column the probes add to a staged input, typed as the probes type them.
_NOTHING_STORED = """stage AS (
    SELECT s.*, NULL::bigint AS here_id, NULL::text AS here_path, NULL::ocr_status AS here_status,
           NULL::bigint AS hrej_id, NULL::text AS hrej_path,
           NULL::bigint AS mine_id, NULL::ocr_status AS mine_status, NULL::text AS mine_batch,
           NULL::integer AS mine_pos, NULL::bigint AS mine_chain, NULL::text AS pub_batch
    FROM {stage_images} s
),
seen AS (
    SELECT st.*, false AS seen_here FROM stage st
),
judged AS ("""


def merge_without_probes() -> sql.Composed:
    text = queries.get("merge")
    stripped, found = re.subn(r"stage AS \(.*?\njudged AS \(", lambda _: _NOTHING_STORED, text, flags=re.S)
    if found != 1:
        raise RuntimeError("the merge's stage/seen/judged CTEs changed shape: update no_probes.py")
    return sql.SQL(stripped).format(**staging_names())


class LoaderWithoutProbes(Loader):
    """save_batch with the merge above swapped in for the duration of the call."""

    name = "loader without probes"

    def __call__(self, batch_id: str, results: Sequence[dict[str, Any]]) -> None:
        real = save_module._MERGE
        save_module._MERGE = merge_without_probes()
        try:
            super().__call__(batch_id, results)
        finally:
            save_module._MERGE = real
