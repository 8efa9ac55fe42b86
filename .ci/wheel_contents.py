#!/usr/bin/env python3
"""Fail when the built wheel or sdist lacks a file of the source package.

Usage: python3 .ci/wheel_contents.py DIST_DIR   (holding one .whl and one .tar.gz)

What must ship is derived from the source tree, not listed by hand: every file git
tracks under loader/ (modules, py.typed, schema.sql, sql/*.sql, migrations/*.sql),
so a new SQL file or migration that pyproject's package-data misses fails here.
The resources the code reads by name must also be among them (a guard against an
empty glob or a renamed folder). Standard library only.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The files the code opens through importlib.resources (loader/schema/apply.py,
# loader/queries.py, loader/schema/migrate.py) and the PEP 561 marker mypy users need.
READ_BY_NAME = ("loader/py.typed", "loader/schema.sql")
READ_BY_GLOB = ("loader/sql/*.sql", "loader/schema/migrations/*.sql")


def source_files() -> set[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", "loader"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {line for line in out.splitlines() if line}


def required() -> set[str]:
    files = source_files()
    for pattern in READ_BY_GLOB:
        matched = {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern)}
        if not matched:
            sys.exit(f"wheel contents: nothing in the source tree matches {pattern}")
        files |= matched
    return files | set(READ_BY_NAME)


def check(kind: str, shipped: set[str], wanted: set[str]) -> list[str]:
    missing = sorted(wanted - shipped)
    for name in missing:
        print(f"{kind}: missing {name}", file=sys.stderr)
    return missing


def main(dist: Path) -> int:
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    wanted = required()
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
    with tarfile.open(sdist) as tf:
        # An sdist holds <name>-<version>/<path>; it must rebuild the same wheel.
        in_sdist = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    missing = check(wheel.name, in_wheel, wanted) + check(sdist.name, in_sdist, wanted)
    if not any(n.endswith(".dist-info/entry_points.txt") for n in in_wheel):
        missing.append("entry_points.txt")
        print(f"{wheel.name}: no console script (the `loader` command)", file=sys.stderr)
    if missing:
        return 1
    print(f"wheel contents: {wheel.name} and {sdist.name} hold all {len(wanted)} files of loader/")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
