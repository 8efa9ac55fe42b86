"""The loader's Celery app, configured for at-least-once delivery."""

from __future__ import annotations

from typing import Any

from celery import Celery

from loader.celery.config import TASK_NAME, CeleryConfig, config


def make_app(cfg: CeleryConfig | None = None, *, main: str = "loader") -> Celery:
    """A Celery app with the loader's settings; publishers may make their own with it.

    Configured on first use (Celery's lazy defaults), not here: importing the module
    that holds the app reads no environment and can refuse nothing.
    """
    app = Celery(main, set_as_current=False)
    app.add_defaults(lambda: settings(cfg or config()))
    return app


def settings(cfg: CeleryConfig) -> dict[str, Any]:
    """The Celery settings of the loader's app under ``cfg``."""
    return dict(
        broker_url=cfg.broker_url,
        result_backend=cfg.backend(),
        # JSON only: a pickled message would let whoever can publish run code in the worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # At-least-once: acknowledge after the task ran, and put the message back
        # if the process running it dies; save_batch makes the rerun harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process: with late acks, a prefetched message
        # would wait behind a long batch while another worker idles.
        worker_prefetch_multiplier=1,
        task_default_queue=cfg.queue,
        task_routes={TASK_NAME: {"queue": cfg.queue}},
        broker_transport_options={"visibility_timeout": cfg.visibility_timeout_s}
        | cfg.broker_transport_options,
        broker_connection_retry_on_startup=True,
        result_expires=cfg.result_expires_s,
    )


#: The app ``celery -A loader.celery worker`` runs (configured from the environment on first use).
app = make_app()
