"""A real S3-compatible server for the tests: moto's standalone server on loopback.

Started as a subprocess (``moto_server -H 127.0.0.1 -p PORT``) on a free port and
stopped by the fixture; each test uses its own bucket. The endpoint and
credentials reach boto3 through its standard environment variables, in the test
process and in the workers it starts.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MOTO_BIN = Path(sys.executable).with_name("moto_server")
# Seconds moto gets to start (it imports Flask and every AWS service model).
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """boto3's standard settings pointing at this server (moto accepts any key)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "loader-test",
            "AWS_SECRET_ACCESS_KEY": "loader-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(logfile: Path) -> Iterator[S3Server]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(logfile, "wb") as log:
        process = subprocess.Popen(
            [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{endpoint}/moto-api/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start:\n{logfile.read_text(errors='replace')}")
            time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
