"""The docs' code as a user's type checker sees it: the SSE endpoint of
docs/progress-events.md passes ``mypy --strict`` against this checkout's loader."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "progress-events.md"


def _endpoint_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "FastAPI(" in b]
    return code


def test_the_sse_endpoint_of_the_docs_passes_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    pytest.importorskip("fastapi")
    example = tmp_path / "sse_endpoint.py"
    example.write_text(_endpoint_code(), encoding="utf-8")
    # The user's settings: strict, with pydantic's plugin, and this checkout's loader first.
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\nplugins = pydantic.mypy\n", encoding="utf-8")
    env = {**os.environ, "MYPYPATH": str(ROOT)}

    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", "cache", example.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success: no issues found in 1 source file" in checked.stdout
