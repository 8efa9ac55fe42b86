"""The save path, the loader's spine: one call's inputs judged, copied and merged.

A call flows validate -> copy -> merge: ``call`` (save_batch, one transaction) asks
``validate`` to judge the inputs (``fields`` declares what an OCR result holds,
``fastcheck`` the hot path of that judgement, ``digest`` what the ledger remembers),
sends them by binary COPY (``loader.copy``), runs the merge (``loader/sql/save.sql``)
and reads its ``rows`` into a ``report``; ``isolate`` is the safety net when the
database refuses what validation let through. ``pipeline`` and ``chunks`` split
judging from storing for loads of many calls (``jsonl`` reads their lines), and
``batch_ids`` and ``retry`` hold the checks and the retry policy every entry point shares.
"""
