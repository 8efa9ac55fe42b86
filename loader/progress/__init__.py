"""A batch's progress: read from its rows, stale-aware (``read``), and the save
metrics exported to Prometheus (``metrics``). The async follower and hub are in
``loader.aio``."""
