"""docs/architecture.md stays true: it names every module, names nothing that is gone,
and the layout it draws holds (imports only go down, from the rooms to the ground floor)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
LOADER = ROOT / "loader"

#: The rooms the page draws, and the packages whose modules it names as a whole.
ROOMS = ("save", "schema", "progress", "lifecycle")
NAMED_AS_A_WHOLE = ("cli", "celery", "orm")
#: The ground floor: what every room uses, which uses no room.
GROUND = (
    "fields",
    "models",
    "errors",
    "settings",
    "batch_ids",
    "connection",
    "steps",
    "queries",
    "copy",
    "dsn",
)


def _named_paths() -> set[str]:
    """Every ``loader/...`` path the page names in backticks (``_history.py`` after an
    ``loader/orm/`` path counts as ``loader/orm/_history.py``)."""
    return set(re.findall(r"`(loader/[\w/.*-]+)`", PAGE))


def test_every_path_the_page_names_exists() -> None:
    missing = [p for p in sorted(_named_paths()) if not list(ROOT.glob(p))]

    assert missing == []


def test_every_module_of_a_room_and_of_the_ground_floor_is_named() -> None:
    named = _named_paths()
    unnamed = []
    for path in sorted(LOADER.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        parts = path.relative_to(LOADER).parts
        if path.name == "__init__.py" and relative != "loader/__init__.py":
            continue
        if parts[0] in NAMED_AS_A_WHOLE:
            assert f"loader/{parts[0]}/" in named, parts[0]
            assert path.name in PAGE or path.name.startswith("_"), relative
            continue
        if relative not in named:
            unnamed.append(relative)

    assert unnamed == []


def _imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "loader" and len(parts) > 1 and parts[1] in ROOMS + NAMED_AS_A_WHOLE:
                rooms.add(parts[1])
    return rooms


def test_the_ground_floor_imports_no_room() -> None:
    upward = {name: _imported_rooms(LOADER / f"{name}.py") for name in GROUND}

    assert {name: rooms for name, rooms in upward.items() if rooms} == {}


def test_a_room_imports_no_entry_point() -> None:
    upward = {
        path.relative_to(ROOT).as_posix(): rooms & set(NAMED_AS_A_WHOLE)
        for room in ROOMS
        for path in (LOADER / room).glob("*.py")
        if (rooms := _imported_rooms(path))
    }

    assert {name: rooms for name, rooms in upward.items() if rooms} == {}
