"""Judging every input before COPY, so that COPY never fails on data.

Each input ends as one of:
- an image to store (success with its boxes, or failed with the reason), or
- a reject (it cannot be stored at all), kept with its raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from loader import fastcheck
from loader.models import (
    MAX_ERROR_CHARS,
    MAX_PATH_BYTES,
    InputIssue,
    OCRResult,
)

# Namespace of the chain ids the loader derives (UUIDv5), fixed forever: changing
# it would make redelivered batches create new chains.
CHAIN_NAMESPACE = uuid.UUID("6f1b7c52-4d7e-4a59-9a43-0c8e2f6b1d11")

# How much of an offending value an error message quotes, in characters.
_QUOTE_CHARS = 60
# How many field errors one message lists; the rest are counted, not quoted.
_MAX_ERRORS_LISTED = 3

# Quotes offending values without walking all of them: plain repr() of a deeply
# nested list raises RecursionError, and of a 1 MB text copies it all first.
_QUOTER = reprlib.Repr()
_QUOTER.maxlevel = 3
_QUOTER.maxstring = _QUOTE_CHARS
_QUOTER.maxother = _QUOTE_CHARS

Input = OCRResult | Mapping[str, Any] | str | bytes


@dataclass(frozen=True)
class Image:
    """An input that will be stored (as success or as failed)."""

    pos: int
    chain_id: str
    image_path: str
    public_path: str | None
    status: str  # 'success' | 'failed'
    error: str | None
    boxes: list[tuple[int, int, str, float, str]]  # COPY rows for the box staging table
    source: Input


@dataclass(frozen=True)
class Reject:
    """An input that cannot be stored; its raw bytes are kept in load_rejects."""

    pos: int
    image_path: str | None
    reason: str
    raw: bytes

    @property
    def raw_sha256(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


@dataclass
class Prepared:
    """One call's inputs, judged."""

    received: int
    images: list[Image] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    # Inputs stored as failed because the loader found them invalid, by position.
    invalid: dict[int, str] = field(default_factory=dict)


def chain_id_for(batch_id: str, image_path: str) -> str:
    """The chain id of an image in a batch: stable across redeliveries."""
    return chain_ids(batch_id)(image_path)


# What json.dumps writes for a str (ensure_ascii, the default).
_json_str = json.encoder.encode_basestring_ascii


def chain_ids(batch_id: str) -> Callable[[str], str]:
    """chain_id_for for one batch, at a third of the cost (it runs for every input).

    Computes ``str(uuid.uuid5(CHAIN_NAMESPACE, json.dumps([batch_id, image_path])))``
    without the UUID object and the JSON encoder: SHA-1 of the namespace and the
    name (the batch's part hashed once), then the version and variant bits.
    """
    prefix = hashlib.sha1(CHAIN_NAMESPACE.bytes + f"[{_json_str(batch_id)}, ".encode(), usedforsecurity=False)

    def chain_id(image_path: str) -> str:
        digest = prefix.copy()
        digest.update(f"{_json_str(image_path)}]".encode())
        b = bytearray(digest.digest()[:16])
        b[6] = (b[6] & 0x0F) | 0x50  # version 5
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    return chain_id


def raw_bytes(item: Input) -> bytes:
    """The input as received: the line's bytes, or the JSON encoding of an object."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        # surrogatepass keeps even lone surrogates, byte for byte.
        return item.encode("utf-8", "surrogatepass")
    if isinstance(item, OCRResult):
        try:
            return item.model_dump_json().encode("utf-8")
        except ValueError:  # built without validation (model_construct): a lone surrogate
            item = item.model_dump()
    try:
        return json.dumps(item, ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError):
        # Not JSON-encodable at all (non-string keys, a cycle, nesting deeper than
        # the interpreter recurses): keep what Python can say about it.
        try:
            return repr(item).encode("utf-8", "surrogatepass")
        except RecursionError:
            return _QUOTER.repr(item).encode("utf-8", "surrogatepass")


def _quote(value: Any) -> str:
    text = _QUOTER.repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def storable(text: str) -> str:
    """Make free text (an error message) storable: NUL and lone surrogates escaped, length capped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 20] + " ...[truncated]"
    return text


def _path_ok(value: Any) -> bool:
    return path_problem(value, "path") is None


def path_problem(value: Any, what: str) -> str | None:
    """Why ``value`` is not a usable path, or None."""
    if value is None:
        return f"{what} is missing"
    if not isinstance(value, str):
        return f"{what} is not a string (got {type(value).__name__})"
    if not value.strip():
        return f"{what} is empty or only whitespace"
    if "\x00" in value:
        return f"{what} contains a NUL byte"
    if len(value) > MAX_PATH_BYTES:
        return f"{what} is longer than {MAX_PATH_BYTES} bytes ({len(value)} characters)"
    if not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return f"{what} is not valid Unicode (lone surrogate)"
        if size > MAX_PATH_BYTES:
            return f"{what} is longer than {MAX_PATH_BYTES} bytes in UTF-8 ({size})"
    return None


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line naming each offending field and value."""
    parts = []
    errors = exc.errors(include_url=False)
    for err in errors[:_MAX_ERRORS_LISTED]:
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        parts.append(f"{loc or 'input'}: {err['msg']} (got {_quote(err.get('input'))})")
    if len(errors) > _MAX_ERRORS_LISTED:
        parts.append(f"and {len(errors) - _MAX_ERRORS_LISTED} more")
    return "invalid OCR result: " + "; ".join(parts)


def _parse(item: str | bytes) -> tuple[Mapping[str, Any] | None, str | None]:
    try:
        value = json.loads(item)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON: {exc}"
    except RecursionError:
        return None, "not valid JSON: nested deeper than the parser can follow"
    if not isinstance(value, dict):
        return None, f"not a JSON object (got a JSON {type(value).__name__})"
    return value, None


def prepare(batch_id: str, results: Iterable[Input], position_offset: int = 0) -> Prepared:
    """Judge every input of one call. Never raises on bad data."""
    prepared = Prepared(received=0)
    seen_paths: dict[str, int] = {}
    seen_public: dict[str, int] = {}
    chain_id_of = chain_ids(batch_id)
    for index, item in enumerate(results):
        prepared.received += 1
        pos = position_offset + index

        def reject(
            reason: str, image_path: str | None = None, *, _item: Input = item, _pos: int = pos
        ) -> None:
            prepared.rejects.append(Reject(_pos, image_path, reason, raw_bytes(_item)))

        if isinstance(item, OCRResult):
            result: OCRResult | None = item
            data: Mapping[str, Any] = {}
        else:
            if isinstance(item, str | bytes):
                parsed, problem = _parse(item)
                if parsed is None:
                    reject(problem or "unreadable input")
                    continue
                data = parsed
            elif isinstance(item, Mapping):
                data = item
            else:
                reject(f"not an OCR result (got a {type(item).__name__})")
                continue
            result = None

        image_path = result.image_path if result else data.get("image_path")
        # Checked for OCRResult objects too: one built with model_construct() was
        # never validated, and lock_batch sends every path before COPY would.
        problem = path_problem(image_path, "image_path")
        if problem:
            reject(f"no usable image_path: {problem}")
            continue
        assert isinstance(image_path, str)
        if image_path in seen_paths:
            reject(
                f"duplicate image_path within this call (first at position {seen_paths[image_path]})",
                image_path,
            )
            continue

        error: str | None = None
        # Inputs that are certainly valid skip the model (see fastcheck.py).
        quick = None if result is not None else fastcheck.check(data, _path_ok, pos)
        if quick is None and result is None:
            try:
                result = OCRResult.model_validate(data)
            except ValidationError as exc:
                error = describe(exc)

        if quick is not None:
            public_path = quick.public_path
        elif result is not None:
            public_path = result.public_path
            problem = None if public_path is None else path_problem(public_path, "public_path")
            if problem:
                error, result, public_path = f"invalid OCR result: {problem}", None, None
        else:
            raw_public = data.get("public_path")
            public_path = raw_public if path_problem(raw_public, "public_path") is None else None
        if public_path is not None and public_path in seen_public:
            reject(
                f"duplicate public_path within this call (first at position {seen_public[public_path]})",
                image_path,
            )
            continue

        seen_paths[image_path] = pos
        if public_path is not None:
            seen_public[public_path] = pos
        chain_id = chain_id_of(image_path)

        boxes: list[tuple[int, int, str, float, str]] = []
        if quick is not None:
            status = quick.status
            if status == "failed":
                error = storable(quick.error or "") or "upstream OCR failure (no error message given)"
            else:
                boxes = quick.boxes
        elif result is None:
            assert error is not None
            prepared.invalid[pos] = error
            status = "failed"
        elif result.status == "failed":
            status = "failed"
            error = storable(result.error or "") or "upstream OCR failure (no error message given)"
        else:
            status = "success"
            boxes = [
                (pos, n, box.text, box.confidence, json.dumps(box.bbox))
                for n, box in enumerate(result.text_boxes)
            ]
        prepared.images.append(
            Image(
                pos,
                chain_id,
                image_path,
                public_path,
                status,
                error and storable(error),
                boxes,
                item,
            )
        )
    return prepared


def invalid_issues(prepared: Prepared, paths: Mapping[int, str]) -> list[InputIssue]:
    """Issues for inputs stored as failed because they were invalid."""
    return [
        InputIssue(position=pos, image_path=paths.get(pos), outcome="failed", reason=reason)
        for pos, reason in prepared.invalid.items()
    ]
