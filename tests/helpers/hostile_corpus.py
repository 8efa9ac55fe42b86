"""Inputs that break naive loaders, each with the outcome the loader must give it.

``corpus(prefix)`` returns cases whose image paths all start with ``prefix`` so
that two copies of the corpus (fed as dicts, and as JSON lines) never collide.
Every case says what must become of it:

- ``stored``: stored with status success, every box round-tripping exactly;
- ``failed``: stored with status failed and a reason, no boxes;
- ``rejected``: recorded in load_rejects with its raw input, byte for byte.

``line_expect`` overrides the outcome when the case is fed as a JSON line and
the line form behaves differently (e.g. nesting too deep to parse). ``line``
gives the exact bytes of the line when json.dumps cannot produce them.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

OK_BOX = {"text": "ok", "confidence": 0.5, "bbox": [[0, 0], [10, 0], [10, 5], [0, 5]]}


@dataclass(frozen=True)
class Case:
    name: str
    item: Any = field(repr=False)  # what a caller hands in: usually a JSON-decoded dict
    expect: str  # stored | failed | rejected
    why: str = ""  # a phrase the reason must contain (failed/rejected)
    line: bytes | None = field(default=None, repr=False)  # the JSON line, when not json.dumps(item)
    line_expect: str | None = None  # outcome of the line form, when it differs
    line_why: str | None = None  # and its reason
    raw_is_json: bool = True  # the reject's raw bytes decode back to the item

    def as_line(self) -> bytes:
        if self.line is not None:
            return self.line
        return json.dumps(self.item).encode("ascii")

    @property
    def expect_line(self) -> str:
        return self.line_expect or self.expect

    def why_for(self, item: Any) -> str:
        return self.line_why if isinstance(item, bytes) and self.line_why is not None else self.why


def _deep(depth: int) -> list[Any]:
    """A list nested ``depth`` levels deep, built without recursion."""
    root: list[Any] = []
    node = root
    for _ in range(depth - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def corpus(prefix: str) -> list[Case]:
    cases: list[Case] = []
    n = 0

    def path(tag: str) -> str:
        nonlocal n
        n += 1
        return f"{prefix}{n:03d}-{tag}"

    def box_case(name: str, expect: str, why: str = "", **box: Any) -> None:
        cases.append(Case(name, {"image_path": path(name), "text_boxes": [dict(OK_BOX, **box)]}, expect, why))

    # --- text: COPY's text-format specials, control characters, Unicode oddities
    stored_texts = {
        "tab": "a\tb",
        "newline": "line1\nline2",
        "crlf": "a\r\nb",
        "backslash": "C:\\temp\\x",
        "lone backslash": "\\",
        "double quote": 'say "hi"',
        "single quote": "it's",
        "copy null marker": "\\N",
        "copy end marker": "\\.",
        "copy end marker line": "a\n\\.\nb",
        "controls": "\x01\x02\x07\x08\x0b\x0c\x1b\x1f\x7f",
        "c1 controls": "\x80\x85\x9f",
        "line separators": "a\u2028b\u2029c",
        "emoji": "👍🏽 🇰🇷 👨‍👩‍👧",
        "combining": "e\u0301 a\u0300\u0316 Z\u0351\u0346",
        "zero width": "a\u200bb\u200dc\ufeffd",
        "bidi override": "abc\u202edef",
        "noncharacters": "\ufffe\uffff\U0010ffff",
        "hangul": "영수증 합계 ₩12,000",
        "empty": "",
        "spaces": "   ",
        "sql drop": "'); DROP TABLE ocr_executions; --",
        "sql dollar": "$$; DELETE FROM batch_executions; $$",
        "placeholders": "%s %(batch_id)s {} {0}",
        "copy delimiter soup": "\t\\t\\\t|,;\"'",
        "100000 chars": "x" * 100_000,
        "100000 hangul": "한" * 100_000,
    }
    for name, text in stored_texts.items():
        box_case(f"text {name}", "stored", text=text)
    failed_texts = {
        "nul": "a\x00b",
        "only nul": "\x00",
        "lone high surrogate": "a\ud800b",
        "lone low surrogate": "\udfff",
        "100001 chars": "y" * 100_001,
        "1 MB": "z" * 1_000_000,
        "null": None,
        "number": 5,
        "list": ["a"],
    }
    for name, text in failed_texts.items():
        box_case(f"text {name}", "failed", "text", text=text)

    # --- confidence
    for name, value in {
        "zero": 0.0,
        "one": 1.0,
        "negative zero": -0.0,
        "subnormal": 5e-324,
        "int one": 1,
        "int zero": 0,
        "just below one": 0.9999999999999999,
    }.items():
        box_case(f"confidence {name}", "stored", confidence=value)
    for name, value in {
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": float("-inf"),
        "1.0000001": 1.0000001,
        "tiny negative": -1e-300,
        "string": "0.5",
        "null": None,
        "bool": True,
        "huge int": 10**400,
        "list": [0.5],
    }.items():
        box_case(f"confidence {name}", "failed", "confidence", confidence=value)

    # --- bbox: shape, depth, type, size
    for name, value in {
        "one point": [[0, 0]],
        "64 points": [[i, i] for i in range(64)],
        "huge coordinates": [[1e308, -1e308], [1.7976931348623157e308, 0]],
        "subnormal coordinates": [[5e-324, -5e-324]],
        "negative zero": [[-0.0, 1.5]],
    }.items():
        box_case(f"bbox {name}", "stored", bbox=value)
    for name, value in {
        "empty": [],
        "short point": [[0]],
        "3d point": [[0, 0, 0]],
        "flat": [0, 0, 10, 10],
        "too deep": [[[0, 0]]],
        "string": "[[0, 0]]",
        "object": {"x": 0, "y": 0},
        "string coordinates": [["a", "b"]],
        "bool coordinates": [[True, False]],
        "null coordinate": [[None, 0]],
        "nan coordinate": [[float("nan"), 0]],
        "inf coordinate": [[float("inf"), 0]],
        "65 points": [[i, i] for i in range(65)],
        "null": None,
        "10000 points": [[i, i] for i in range(10_000)],
    }.items():
        box_case(f"bbox {name}", "failed", "bbox", bbox=value)
    # Nested deeper than Python's json recursion: the dict validates (the box
    # fails), but the line cannot even be parsed.
    deep = _deep(100_000)
    cases.append(
        Case(
            "bbox nested 100000 deep",
            {"image_path": path("bbox deep"), "text_boxes": [dict(OK_BOX, bbox=deep)]},
            "failed",
            "bbox",
            line=b'{"image_path": "'
            + path("bbox deep line").encode()
            + b'", "text_boxes": [{"bbox": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}]}",
            line_expect="rejected",
            line_why="nested",
        )
    )

    # --- text_boxes as a whole
    cases += [
        Case("no boxes", {"image_path": path("no boxes"), "text_boxes": []}, "stored"),
        Case("1000 boxes", {"image_path": path("1000 boxes"), "text_boxes": [OK_BOX] * 1000}, "stored"),
        Case("boxes null", {"image_path": path("boxes null"), "text_boxes": None}, "failed", "text_boxes"),
        Case("boxes string", {"image_path": path("boxes str"), "text_boxes": "[]"}, "failed", "text_boxes"),
        Case("boxes object", {"image_path": path("boxes obj"), "text_boxes": OK_BOX}, "failed", "text_boxes"),
        Case("box null", {"image_path": path("box null"), "text_boxes": [None]}, "failed", "text_boxes"),
        Case("box number", {"image_path": path("box num"), "text_boxes": [5]}, "failed", "text_boxes"),
        Case(
            "box missing text",
            {"image_path": path("box no text"), "text_boxes": [{"confidence": 0.5, "bbox": [[0, 0]]}]},
            "failed",
            "text",
        ),
    ]

    # --- status and error
    cases += [
        Case(
            "upstream failure",
            {"image_path": path("upstream"), "status": "failed", "error": "engine timeout"},
            "failed",
            "engine timeout",
        ),
        Case(
            "failed without error",
            {"image_path": path("failed no error"), "status": "failed"},
            "failed",
            "no error message",
        ),
        Case(
            "failed empty error",
            {"image_path": path("failed empty"), "status": "failed", "error": ""},
            "failed",
            "no error message",
        ),
        Case(
            "failed 1 MB error",
            {"image_path": path("failed 1MB"), "status": "failed", "error": "e" * 1_000_000},
            "failed",
            "truncated",
        ),
        Case(
            "failed NUL error",
            {"image_path": path("failed nul"), "status": "failed", "error": "bad\x00byte"},
            "failed",
            "\\x00",
        ),
        Case(
            "failed surrogate error",
            {"image_path": path("failed sur"), "status": "failed", "error": "bad\udc80"},
            "failed",
            "\\udc80",
        ),
        Case(
            "failed SQL error",
            {"image_path": path("failed sql"), "status": "failed", "error": "'; DROP TABLE load_rejects; --"},
            "failed",
            "DROP TABLE",
        ),
        Case(
            "error number",
            {"image_path": path("error num"), "status": "failed", "error": 5},
            "failed",
            "error",
        ),
        Case(
            "status upper case", {"image_path": path("status upper"), "status": "FAILED"}, "failed", "status"
        ),
        Case("status null", {"image_path": path("status null"), "status": None}, "failed", "status"),
        Case("status number", {"image_path": path("status num"), "status": 1}, "failed", "status"),
        Case(
            "success with error",
            {"image_path": path("success err"), "status": "success", "error": "ignored"},
            "stored",
        ),
    ]

    # --- image_path: missing, wrong type, blank, NUL, surrogates, too long
    for name, value in {
        "null": None,
        "empty": "",
        "spaces": "   ",
        "tab newline": "\t\n",
        "number": 5,
        "list": ["/a"],
        "object": {"path": "/a"},
        "bool": True,
        "nul": f"{prefix}nul\x00path",
        "lone surrogate": f"{prefix}sur\ud800",
        "10 KB": prefix + "k" * 10_240,
        "2049 bytes": prefix + "b" * (2049 - len(prefix.encode())),
        "2049 bytes hangul": prefix
        + "x" * ((2049 - len(prefix.encode())) % 3)
        + "한" * ((2049 - len(prefix.encode())) // 3),
    }.items():
        cases.append(Case(f"image_path {name}", {"image_path": value}, "rejected", "image_path"))
    cases.append(Case("image_path missing", {"text_boxes": [OK_BOX]}, "rejected", "image_path is missing"))
    for name, tag in {
        "control chars": "\x01\x1f\x7f",
        "tab newline inside": "a\tb\nc",
        "backslashes": "\\N\\.\\",
        "quotes": "'\"`",
        "emoji": "👍🏽",
        "sql": "'; DROP TABLE chain_executions; --",
        "percent": "%s%(x)s",
    }.items():
        cases.append(Case(f"image_path {name}", {"image_path": path(tag)}, "stored"))
    longest = prefix + "L" * (2048 - len(prefix.encode()))
    cases.append(Case("image_path 2048 bytes", {"image_path": longest}, "stored"))
    hangul_room = 2048 - len(prefix.encode()) - 1
    cases.append(
        Case(
            "image_path hangul 2046 bytes", {"image_path": prefix + "H" + "경" * (hangul_room // 3)}, "stored"
        )
    )
    # Unicode normalisation and trailing space make different paths: stored byte-exact.
    nfc = unicodedata.normalize("NFC", f"{prefix}café")
    nfd = unicodedata.normalize("NFD", f"{prefix}café")
    assert nfc != nfd
    cases += [
        Case("path NFC", {"image_path": nfc}, "stored"),
        Case("path NFD", {"image_path": nfd}, "stored"),
        Case("path plain", {"image_path": f"{prefix}trailing"}, "stored"),
        Case("path trailing space", {"image_path": f"{prefix}trailing "}, "stored"),
        Case(
            "path exact duplicate",
            {"image_path": f"{prefix}trailing", "status": "failed"},
            "rejected",
            "duplicate image_path",
        ),
    ]

    # --- public_path
    shared_public = f"https://cdn.example.com/{prefix}shared.jpg"
    cases += [
        Case("public_path set", {"image_path": path("pub"), "public_path": shared_public}, "stored"),
        Case(
            "public_path duplicate",
            {"image_path": path("pub dup"), "public_path": shared_public},
            "rejected",
            "public_path already used by another image",
        ),
        Case(
            "public_path empty", {"image_path": path("pub empty"), "public_path": ""}, "failed", "public_path"
        ),
        Case(
            "public_path nul",
            {"image_path": path("pub nul"), "public_path": "x\x00y"},
            "failed",
            "public_path",
        ),
        Case(
            "public_path 10 KB",
            {"image_path": path("pub 10k"), "public_path": "p" * 10_240},
            "failed",
            "public_path",
        ),
        Case(
            "public_path number", {"image_path": path("pub num"), "public_path": 5}, "failed", "public_path"
        ),
    ]

    # --- extra unknown fields are ignored, whatever they hold
    cases += [
        Case(
            "extra fields",
            {"image_path": path("extra"), "text_boxes": [dict(OK_BOX, extra=1)], "engine": "x", "id": None},
            "stored",
        ),
        Case("extra NUL field", {"image_path": path("extra nul"), "note": "\x00", "nul\x00key": 1}, "stored"),
        Case("extra nested 50 deep", {"image_path": path("extra deep"), "extra": _deep(50)}, "stored"),
        Case(
            "extra nested 100000 deep",
            {"image_path": path("extra very deep"), "extra": deep},
            "stored",
            line=b'{"image_path": "'
            + path("extra very deep line").encode()
            + b'", "extra": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}",
            line_expect="rejected",
            line_why="nested",
        ),
        Case("SQL-looking keys", {"image_path": path("sql keys"), "'; DROP TABLE x; --": 1}, "stored"),
    ]
    return cases


def dict_only_cases(prefix: str) -> list[Case]:
    """In-memory inputs that are not JSON-decoded dicts at all."""
    cyclic: dict[str, Any] = {"note": "no image_path"}
    cyclic["self"] = cyclic
    return [
        Case("list input", [1, 2], "rejected", "not an OCR result"),
        Case("None input", None, "rejected", "not an OCR result"),
        Case("int input", 5, "rejected", "not an OCR result"),
        Case("cyclic dict", cyclic, "rejected", "image_path is missing", raw_is_json=False),
        Case("tuple key dict", {(1, 2): "x"}, "rejected", "image_path is missing", raw_is_json=False),
        Case(
            "bytes image_path",
            {"image_path": prefix.encode() + b"bytes"},
            "rejected",
            "not a string",
            raw_is_json=False,
        ),
    ]


def line_only_cases(prefix: str) -> list[Case]:
    """Lines of a JSONL file that are not (complete) JSON objects, and encodings."""
    p = prefix.encode()
    ok = b'{"image_path": "' + p
    return [
        Case("empty line", None, "rejected", "not valid JSON", line=b""),
        Case("newline only", None, "rejected", "not valid JSON", line=b"\n"),
        Case("whitespace line", None, "rejected", "not valid JSON", line=b" \t "),
        Case("not json", None, "rejected", "not valid JSON", line=b"this is not JSON"),
        Case("open brace", None, "rejected", "not valid JSON", line=b"{"),
        Case("truncated", None, "rejected", "not valid JSON", line=ok + b'trunc", "text_boxes": [{"te'),
        Case("truncated in escape", None, "rejected", "not valid JSON", line=ok + b"esc\\u00"),
        Case("two objects", None, "rejected", "not valid JSON", line=ok + b'a"}{"image_path": "b"}'),
        Case("trailing NUL byte", None, "rejected", "not valid JSON", line=ok + b'nulbyte"}\x00'),
        Case("json null", None, "rejected", "not a JSON object", line=b"null"),
        Case("json number", None, "rejected", "not a JSON object", line=b"5"),
        Case("json string", None, "rejected", "not a JSON object", line=b'"{}"'),
        Case("json array", None, "rejected", "not a JSON object", line=b"[]"),
        Case("invalid utf-8", None, "rejected", "not valid JSON", line=ok + b'bad\xff\xfe"}'),
        Case("cesu surrogate bytes", None, "rejected", "surrogate", line=ok + b'cesu\xed\xa0\x80"}'),
        Case("latin-1 line", None, "rejected", "not valid JSON", line=ok + 'caf\xe9"}'.encode("latin-1")),
        Case("escaped surrogate path", None, "rejected", "surrogate", line=ok + b'esc\\ud800"}'),
        Case("escaped NUL path", None, "rejected", "NUL", line=ok + b'esc\\u0000nul"}'),
        Case("nested 100000 deep", None, "rejected", "nested", line=b"[" * 100_000 + b"]" * 100_000),
        Case(
            "5000-digit number",
            None,
            "rejected",
            "not valid JSON",
            line=ok + b'big", "n": 1' + b"0" * 5000 + b"}",
        ),
        Case("python literal", None, "rejected", "not valid JSON", line=b"{'image_path': '/x'}"),
        Case("trailing comma", None, "rejected", "not valid JSON", line=ok + b'comma",}'),
        # Lines the JSON decoder does accept: stored.
        Case("crlf ending", None, "stored", line=ok + b'crlf"}\r\n'),
        Case("utf-8 BOM", None, "stored", line=b"\xef\xbb\xbf" + ok + b'bom"}'),
        Case("utf-16 line", None, "stored", line=('{"image_path": "' + prefix + 'utf16"}').encode("utf-16")),
        Case("duplicate keys", None, "stored", line=b'{"image_path": 5, "image_path": "' + p + b'dupkey"}'),
        Case(
            "NaN literal",
            None,
            "failed",
            "confidence",
            line=ok + b'nan", "text_boxes": [{"text": "a", "confidence": NaN, "bbox": [[0, 0]]}]}',
        ),
        Case(
            "1e999",
            None,
            "failed",
            "confidence",
            line=ok + b'1e999", "text_boxes": [{"text": "a", "confidence": 1e999, "bbox": [[0, 0]]}]}',
        ),
        Case("raw tab in string", None, "rejected", "not valid JSON", line=ok + b'raw\ttab"}'),
    ]
