"""The loader's one retry policy: how long to wait before retrying a transient failure.

Used by the Celery task (loader.celery.tasks.retry_delay) and meant for every other
place that retries a call after a lost connection, a deadlock or a restart (the CLI's
chunk retries), so that all of them back off the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential, capped, jittered delays: ``first_s``, then doubling up to ``max_s``.

    "Equal jitter": each delay lies between half and all of its exponential step, so
    clients that failed together spread out, yet none retries at once into the outage.
    """

    first_s: float
    max_s: float

    def delay(self, retries: int) -> float:
        """Seconds to wait before retry number ``retries + 1``."""
        step = min(self.max_s, self.first_s * 2.0**retries)
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311  (spreading retries, not a secret)
