"""The schema and its life: applied fresh (``apply``), upgraded (``migrate``, the
numbered files in ``migrations/``), compared with what a database holds (``check``),
and adopted from the application's own database (``adopt``, ``adopt_shape``).

``schema.sql`` (the DBA's contract) lies beside the package root.
"""
