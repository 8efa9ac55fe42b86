"""Tests that need no database: they run anywhere, in seconds (`python3 dev.py test tests/unit`).

A unit test that asks for a server fixture fails at once, rather than quietly starting one.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pg_server() -> str:
    pytest.fail("tests/unit needs no database: move a test that uses one to tests/db")
