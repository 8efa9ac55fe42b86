"""Judging every input before COPY, so that COPY never fails on data.

To judge an input is to decide what it becomes, one of:
- an image to store (success with its boxes, or failed with the reason), or
- a reject (it cannot be stored at all), kept with its raw bytes.

To judge a call (judge_call, the one place: save_batch, loader.save.pipeline.judge and
loader.save.chunks come here) is to judge each of its inputs and digest them: a Judged.
The merge then gives each staged input its verdict by position (save.sql's
``judged`` step: what the input does to the batch), which no client code decides.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from loader.copy import bbox_json
from loader.fields import MAX_ERROR_CHARS, STORED, Chars, Declared, Path, path_problem
from loader.models import OCRResult
from loader.save import fastcheck
from loader.save.digest import call_digest as _typed_call_digest
from loader.save.fastcheck import BoxRow, Stored
from loader.save.inputs import QUOTE_CHARS, QUOTER, Input, raw_bytes
from loader.settings import Limits, current_limits

# Namespace of the chain ids the loader derives (UUIDv5), fixed forever: changing
# it would make redelivered batches create new chains.
CHAIN_NAMESPACE = uuid.UUID("6f1b7c52-4d7e-4a59-9a43-0c8e2f6b1d11")

# How many field errors one message lists; the rest are counted, not quoted.
_MAX_ERRORS_LISTED = 3


#: SHA-256 of a call's inputs with their positions over their typed canonical
#: form (loader/save/digest.py): what the batch's ledger remembers of a call.
call_digest = _typed_call_digest


@dataclass(frozen=True)
class Image:
    """An input that will be stored (as success or as failed): its place, and what is stored of it."""

    pos: int
    chain_id: str
    source: Input
    stored: Stored

    @property
    def image_path(self) -> str:
        return self.stored.image_path

    @property
    def status(self) -> str:
        """'success' or 'failed'."""
        return self.stored.status

    @property
    def error(self) -> str | None:
        return self.stored.error

    @property
    def boxes(self) -> list[BoxRow]:
        """COPY rows for the box staging table."""
        return self.stored.boxes

    def as_failed(self, reason: str) -> Image:
        """The input stored as failed after all (the database refused its boxes), ``reason`` its error."""
        fields = {**self.stored.fields, "status": "failed", "error": storable(reason)}
        return Image(self.pos, self.chain_id, self.source, Stored(fields, []))


#: The reason staged for a duplicate within the call. The merge words a duplicate's
#: reason itself (save.sql, judged.reason), naming the position that holds the image
#: in the whole batch, so it reads the same wherever the chunk boundaries fell; this
#: text is never stored nor reported (tests/unit/test_judging.py, tests/db/test_judged_calls.py).
WORDED_BY_THE_MERGE = "(a duplicate: the merge words its reason)"


@dataclass(frozen=True)
class Reject:
    """An input that cannot be stored; its raw bytes are kept in load_rejects."""

    pos: int
    image_path: str | None
    #: Why, in the words stored (WORDED_BY_THE_MERGE for a duplicate).
    reason: str
    raw: bytes
    #: A duplicate within the call ('image_path' or 'public_path'): the merge words its
    #: reason, naming the image's first position in the batch (``dup_of`` in the call).
    duplicate: str | None = None
    dup_of: int | None = None

    @property
    def raw_sha256(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


@dataclass
class _Verdicts:
    """What each input of a call becomes."""

    images: list[Image] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    #: Inputs stored as failed because the loader found them invalid, by position.
    invalid: dict[int, str] = field(default_factory=dict)


# eq=False: two Judged are the same call by their digest, not by how far they were judged.
@dataclass(eq=False)
class Judged:
    """One call of a batch, judged: its inputs' digest and what each input becomes
    (an image to store, as success or failed, or a reject). Made by judge_call only.

    ``judge_call(..., now=False)`` reaches the verdicts when they are first read:
    save_batch reads none for a call the batch's ledger recognises.
    """

    batch_id: str
    #: SHA-256 of the inputs with their positions (call_digest): what the batch's
    #: ledger remembers of the call.
    digest: bytes
    #: The call's inputs (a file's blank lines are none).
    received: int
    first_position: int | None
    #: With first_position, the range whose rows must confirm a ledger hit
    #: (schema.sql, loader_locked_call).
    last_position: int | None
    _numbered: list[tuple[int, Input]] = field(repr=False)
    #: What one result may hold (LOADER_MAX_BOXES, ...): beyond it, stored as failed.
    limits: Limits = field(repr=False)
    _verdicts: _Verdicts | None = field(default=None, repr=False)

    def _reached(self) -> _Verdicts:
        if self._verdicts is None:
            judging = _Judging(self.batch_id, self.limits)
            for pos, item in self._numbered:
                judging.add(pos, item)
            self._verdicts, self._numbered = judging.verdicts, []
        return self._verdicts

    @property
    def images(self) -> list[Image]:
        return self._reached().images

    @property
    def rejects(self) -> list[Reject]:
        return self._reached().rejects

    @property
    def invalid(self) -> dict[int, str]:
        return self._reached().invalid


def judge_call(
    batch_id: str, numbered: Iterable[tuple[int, Input]], *, now: bool = True, limits: Limits | None = None
) -> Judged:
    """Validate and digest one call: its inputs with their positions, in increasing order,
    gaps allowed (a file's blank lines are no input but keep their number). Never raises
    on bad data. The one way a call is judged: save_batch, loader.save.pipeline.judge and the
    chunks of a file (loader.save.chunks) all come here. ``limits``: what one result may
    hold (None: ``Limits()`` from the environment); they do not enter the digest.
    """
    inputs = list(numbered)
    judged = Judged(
        batch_id,
        call_digest(inputs),
        len(inputs),
        inputs[0][0] if inputs else None,
        inputs[-1][0] if inputs else None,
        inputs,
        limits or current_limits(),
    )
    if now:
        judged._reached()
    return judged


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


def _quote(value: Any) -> str:
    text = QUOTER.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


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


# Each stored field's quick check (loader/fields.py): whether a value is certainly storable as it is.
_QUICK = {f.name: f.quick(_path_ok) for f in STORED}


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
    """A JSON line decoded, or None and why not.

    pydantic-core's parser (Rust) first: twice as fast as json.loads, and where it
    succeeds it yields the same values (tests/unit/test_fastcheck.py). Whatever it
    refuses (a BOM, UTF-16, lone surrogates, deep nesting, bad JSON) goes to
    json.loads, which decides as it always did and words the error.
    """
    try:
        value = from_json(item, cache_strings="keys")
    except (ValueError, TypeError):  # TypeError: a str it cannot read as UTF-8 (lone surrogates)
        return _parse_stdlib(item)
    if not isinstance(value, dict):
        return None, f"not a JSON object (got a JSON {type(value).__name__})"
    return value, None


def _parse_stdlib(item: str | bytes) -> tuple[Mapping[str, Any] | None, str | None]:
    try:
        value = json.loads(item)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON: {exc}"
    except RecursionError:
        return None, "not valid JSON: nested deeper than the parser can follow"
    if not isinstance(value, dict):
        return None, f"not a JSON object (got a JSON {type(value).__name__})"
    return value, None


def _decode(item: Input) -> tuple[OCRResult | Mapping[str, Any] | None, str | None]:
    """An input as an OCRResult or a mapping to judge, or None and why it cannot be read."""
    if isinstance(item, OCRResult | Mapping):
        return item, None
    if isinstance(item, str | bytes):
        return _parse(item)
    return None, f"not an OCR result (got a {type(item).__name__})"


_NO_UPSTREAM_ERROR = "upstream OCR failure (no error message given)"


def _outcome(stored: Stored) -> Stored:
    """A valid result as stored: a failure keeps no boxes and always a reason; a success no error."""
    fields = stored.fields
    if fields["status"] == "failed":
        fields["error"] = storable(fields["error"] or "") or _NO_UPSTREAM_ERROR
        stored.boxes = []
    else:
        fields["error"] = None
    return stored


def _usable(field: Declared, value: object) -> bool:
    """Whether a value can be stored on its own (a failure still says which model it came from)."""
    return value is not None and _QUICK[field.name](value)


def _invalid(error: str, data: OCRResult | Mapping[str, Any], image_path: str) -> Stored:
    """An invalid input, stored as failed; its other fields are kept when usable on their own."""
    fields: dict[str, Any] = dict.fromkeys(f.name for f in STORED)
    for f in STORED:
        value = data.get(f.name) if isinstance(data, Mapping) else getattr(data, f.name, None)
        if f.nullable and _usable(f, value):
            fields[f.name] = value
    fields.update(image_path=image_path, status="failed", error=storable(error))
    return Stored(fields, [], invalid=True)


def _judge_model(result: OCRResult, pos: int) -> Stored:
    # Checked for OCRResult objects too: one built with model_construct() was
    # never validated.
    fields = {f.name: getattr(result, f.name) for f in STORED}
    for f in STORED:
        value = fields[f.name]
        if f.name != "image_path" and not _QUICK[f.name](value):
            problem = path_problem(value, f.name) if isinstance(f.rule, Path) else _unfit(f)
            return _invalid(f"invalid OCR result: {problem}", result, result.image_path)
    if result.status == "failed":
        return _outcome(Stored(fields, []))
    rows = [
        (pos, n, box.text, box.confidence, bbox_json(box.bbox)) for n, box in enumerate(result.text_boxes)
    ]
    return _outcome(Stored(fields, rows))


def _beyond_limits(stored: Stored, limits: Limits) -> str | None:
    """Which limit of ``limits`` a valid result exceeds, or None (a failure keeps no boxes)."""
    boxes = stored.boxes
    if len(boxes) > limits.max_boxes:
        return f"{len(boxes):,} text boxes, more than the limit of {limits.max_boxes:,} (LOADER_MAX_BOXES)"
    if not limits.tightened:
        return None  # the declared limits, which judging already applied
    for _pos, n, text, _confidence, bbox in boxes:
        if len(text) > limits.max_text_chars:
            return (
                f"text_boxes[{n}].text has {len(text):,} characters, more than the limit of "
                f"{limits.max_text_chars:,} (LOADER_MAX_TEXT_CHARS)"
            )
        # A validated bbox's JSON is a list of [x, y] lists of numbers: one "[" per point, plus its own.
        points = bbox.count("[") - 1
        if points > limits.max_bbox_points:
            return (
                f"text_boxes[{n}].bbox has {points} points, more than the limit of "
                f"{limits.max_bbox_points} (LOADER_MAX_BBOX_POINTS)"
            )
    return None


def _unfit(field: Declared) -> str:
    """Why a value of a model built without validation cannot be stored."""
    if isinstance(field.rule, Chars):
        low = "empty or " if field.rule.min_chars else ""
        return f"{field.name} is {low}longer than {field.rule.max_chars} or not storable text"
    return f"{field.name} is not one of the values it takes"


def _judge(data: OCRResult | Mapping[str, Any], pos: int) -> Stored:
    """The verdict on an input: inputs that are certainly valid skip the model (see fastcheck.py)."""
    if isinstance(data, OCRResult):
        return _judge_model(data, pos)
    quick = fastcheck.check(data, _path_ok, pos)
    if quick is not None:
        return _outcome(quick)
    try:
        result = OCRResult.model_validate(data)
    except ValidationError as exc:
        return _invalid(describe(exc), data, data["image_path"])
    return _judge_model(result, pos)


class _Judging:
    """The judging of one call's inputs, in order: duplicates are judged against earlier inputs."""

    def __init__(self, batch_id: str, limits: Limits) -> None:
        self.verdicts = _Verdicts()
        self.limits = limits
        self.seen_paths: dict[str, int] = {}
        self.seen_public: dict[str, int] = {}
        self.chain_id_of = chain_ids(batch_id)

    def reject(
        self, pos: int, item: Input, reason: str, image_path: str | None = None, duplicate: str | None = None
    ) -> None:
        first = self.seen_paths[image_path or ""] if duplicate == "image_path" else None
        self.verdicts.rejects.append(Reject(pos, image_path, reason, raw_bytes(item), duplicate, first))

    def add(self, pos: int, item: Input) -> None:
        data, problem = _decode(item)
        if data is None:
            self.reject(pos, item, problem or "unreadable input")
            return
        image_path = data.image_path if isinstance(data, OCRResult) else data.get("image_path")
        # Checked for OCRResult objects too (model_construct() skips validation),
        # and lock_batch sends every path before COPY would.
        problem = path_problem(image_path, "image_path")
        if problem:
            self.reject(pos, item, f"no usable image_path: {problem}")
            return
        assert isinstance(image_path, str)
        if image_path in self.seen_paths:
            self.reject(pos, item, WORDED_BY_THE_MERGE, image_path, duplicate="image_path")
            return
        verdict = _judge(data, pos)
        beyond = _beyond_limits(verdict, self.limits)
        if beyond is not None:
            verdict = _invalid(f"invalid OCR result: {beyond}", data, image_path)
        public_path = verdict.public_path
        if public_path is not None and public_path in self.seen_public:
            self.reject(pos, item, WORDED_BY_THE_MERGE, image_path, "public_path")
            return
        self.keep(pos, item, image_path, verdict)

    def keep(self, pos: int, item: Input, image_path: str, verdict: Stored) -> None:
        self.seen_paths[image_path] = pos
        if verdict.public_path is not None:
            self.seen_public[verdict.public_path] = pos
        if verdict.invalid:
            assert verdict.error is not None
            self.verdicts.invalid[pos] = verdict.error
        self.verdicts.images.append(Image(pos, self.chain_id_of(image_path), item, verdict))
