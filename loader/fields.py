"""An OCR result's fields, declared once: type, limit, column, comment.

``ResultFields`` is the declaration. Each field that is stored carries a
``Column`` (its comment, and the PostgreSQL type when not text); a field with a
limit carries its rule (``Chars``, ``Path``). From it follow:

- the input models ``OCRResult`` and ``TextBox`` (loader/models.py subclasses these);
- fastcheck's checks (``Declared.quick``) and the values it stages;
- the staged row and its COPY types (loader/copy.py);
- the merge's column lists (``sql_lists``, filled into loader/sql/save.sql);
- the CHECK each limit implies (``Declared.check``), which tests/db/test_fields.py
  holds schema.sql, the deployed database and loader.orm to.

A new nullable field is one line here, plus its column in schema.sql, a migration
and loader.orm (in ocr_executions and, as a kept result's, in ocr_result_history).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetPydanticSchema
from pydantic_core import CoreSchema, PydanticKnownError, core_schema

# Longest text accepted for one box, in characters. OCR of a page yields at most a
# few thousand; anything near this is a corrupted result, not text worth storing.
MAX_TEXT_CHARS = 100_000
# Most points one bbox may hold. Boxes are quadrilaterals or short polygons; a
# longer list is a corrupted result and would bloat the jsonb column.
MAX_BBOX_POINTS = 64
# Largest magnitude of a bbox coordinate: the largest finite double. Integers are
# kept as integers (stored as sent, ``10`` stays ``10``) up to the same bound the
# floats have, so the set of accepted values is the same as when every
# coordinate was made a float; a larger integer is as corrupt as an infinity.
MAX_COORDINATE = int(sys.float_info.max)
# Longest image_path / public_path, in UTF-8 bytes. Both columns carry a unique
# btree index, whose entries hold at most 2704 bytes (a third of an 8 kB page);
# a longer path made the merge fail for the whole call (SQLSTATE 54000), and
# 4096 characters of Hangul are 12 kB. 2048 bytes stays clear of that limit.
MAX_PATH_BYTES = 2048
# Longest model_version, in characters: a model's name and version, never free text.
MAX_MODEL_VERSION_CHARS = 255
# Longest upstream error message kept, in characters; longer ones are truncated
# with a marker rather than rejected, because the reason must always be stored.
MAX_ERROR_CHARS = 10_000


def storable_text(value: str) -> str:
    """PostgreSQL text holds neither NUL nor lone UTF-16 surrogates: refuse them here, not in COPY."""
    if "\x00" in value:
        raise ValueError("contains a NUL byte, which PostgreSQL text cannot store")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"is not valid Unicode (lone surrogate at index {exc.start})") from None
    return value


def text_ok(value: object) -> bool:
    """storable_text's verdict without raising (the fast path's)."""
    if type(value) is not str or "\x00" in value:
        return False
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return False
    return True


def _indexable_path(value: str) -> str:
    """A path must be non-blank and fit the unique index on its column."""
    if not value.strip():
        raise ValueError("is empty or only whitespace")
    size = len(value) if value.isascii() else len(value.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise ValueError(f"is longer than {MAX_PATH_BYTES} bytes in UTF-8 ({size})")
    return value


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


def _nullable(source: Any, schema: CoreSchema) -> CoreSchema:
    """``schema``, taking None too when the annotated type is optional."""
    if get_origin(source) in (Union, types.UnionType) and type(None) in get_args(source):
        return core_schema.nullable_schema(schema)
    return schema


@dataclass(frozen=True)
class Chars:
    """Storable text (no NUL, no lone surrogate) of ``min_chars`` to ``max_chars`` characters."""

    max_chars: int
    min_chars: int = 0

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # Measured after storable_text, as pydantic's own length check would be
        # before it: its str validator words a lone surrogate as "unable to parse".
        text = core_schema.chain_schema(
            [
                core_schema.str_schema(strict=True),
                core_schema.no_info_plain_validator_function(storable_text),
                core_schema.no_info_plain_validator_function(self._length),
            ]
        )
        return _nullable(source, text)

    def _length(self, value: str) -> str:
        if len(value) > self.max_chars:
            raise PydanticKnownError("string_too_long", {"max_length": self.max_chars})
        if len(value) < self.min_chars:
            raise PydanticKnownError("string_too_short", {"min_length": self.min_chars})
        return value

    def quick(self) -> Callable[[object], bool]:
        low, high = self.min_chars, self.max_chars
        return lambda value: text_ok(value) and low <= len(value) <= high  # type: ignore[arg-type]

    def check(self, column: str) -> str | None:
        bounds = [f"{column} <> ''"] if self.min_chars == 1 else []
        return " AND ".join([*bounds, f"length({column}) <= {self.max_chars}"])


@dataclass(frozen=True)
class Path:
    """A path: storable, non-blank, at most MAX_PATH_BYTES in UTF-8 (its column's unique index)."""

    max_bytes: int = MAX_PATH_BYTES

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        text = core_schema.chain_schema(
            [
                core_schema.str_schema(strict=True),
                core_schema.no_info_plain_validator_function(storable_text),
                core_schema.no_info_plain_validator_function(_indexable_path),
            ]
        )
        return _nullable(source, text)

    def check(self, column: str) -> str | None:
        # The byte limit is the index's, not a CHECK's: only the empty path is refused by one.
        return f"{column} <> ''"


@dataclass(frozen=True)
class Column:
    """Where a field is stored: its ocr_executions column (and ocr_result_history's, once replaced)."""

    comment: str | None = None
    #: The column's PostgreSQL type; staged as text and cast in the merge.
    sql_type: str = "text"
    #: The image's identity (image_path): never replaced, so not kept in the history.
    identity: bool = False


# A coordinate is an int (kept as one: JSON's 10 must come back as 10, not 10.0)
# or a finite float; never a bool, a string, NaN or an infinity. One error for
# both branches, so a message reads "bbox[0][1]: Input should be ..." rather
# than one line per branch of the union.
Coordinate = Annotated[
    int | float,
    GetPydanticSchema(
        lambda _source, _handler: core_schema.union_schema(
            [
                core_schema.int_schema(strict=True, ge=-MAX_COORDINATE, le=MAX_COORDINATE),
                # Floats only: a strict float schema alone would also take (and
                # convert) the integers the first branch refused as too large.
                core_schema.json_or_python_schema(
                    json_schema=core_schema.float_schema(strict=True, allow_inf_nan=False),
                    python_schema=core_schema.chain_schema(
                        [core_schema.is_instance_schema(float), core_schema.float_schema(allow_inf_nan=False)]
                    ),
                ),
            ],
            custom_error_type="coordinate",
            custom_error_message=(
                "Input should be a finite number (an integer or a float of magnitude at most 1.8e308)"
            ),
        )
    ),
]
# A point is [x, y]; JSON has no tuples, so it arrives as a two-element list.
Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]

# Strict: a confidence of "0.9" (a string) is a broken upstream, not a number.
_STRICT = ConfigDict(strict=True, frozen=True, extra="ignore")


class BoxFields(BaseModel):
    """A text box's fields (loader.models.TextBox)."""

    model_config = _STRICT

    text: Annotated[str, Chars(MAX_TEXT_CHARS)]
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    bbox: Annotated[list[Point], Field(min_length=1, max_length=MAX_BBOX_POINTS)]


Box = TypeVar("Box", bound=BoxFields)


class ResultFields(BaseModel, Generic[Box]):
    """An OCR result's fields (loader.models.OCRResult, its boxes ``Box``), in the order a dump lists them."""

    model_config = _STRICT

    image_path: Annotated[
        str,
        Path(),
        Column(
            "Where the image was read from; unique across all batches (an image belongs to one batch).",
            identity=True,
        ),
    ]
    public_path: Annotated[
        str | None, Path(), Column("Public URL/path of the image, if any; unique when present.")
    ] = None
    status: Annotated[Literal["success", "failed"], Column(sql_type="ocr_status")] = "success"
    error: Annotated[
        str | None,
        Column(
            "Why the image failed: the upstream OCR error, or the loader's validation message "
            "(e.g. confidence out of range). NULL on success."
        ),
    ] = None
    text_boxes: list[Box] = Field(default_factory=list)
    #: Which OCR model produced the result, when the stage says so (stored; a re-OCR replaces it).
    model_version: Annotated[
        str | None,
        Chars(MAX_MODEL_VERSION_CHARS, min_chars=1),
        Column(
            "Version 4: which OCR model produced this result, when the input said so; a re-OCR "
            "(save_batch(replace=True)) replaces it with the result."
        ),
    ] = None


# COPY's type of each staged value, by the field's Python type.
_COPY_TYPES = {str: "text", int: "int4", float: "float8"}


@dataclass(frozen=True)
class Declared:
    """One stored field of an OCR result, as the declaration gives it."""

    name: str
    column: Column
    nullable: bool
    default: Any
    rule: Chars | Path | None
    #: The values a Literal field takes (None: any value of its type).
    choices: tuple[Any, ...] | None
    copy_type: str

    @property
    def check(self) -> str | None:
        """The CHECK expression of its column that its rule implies (None: no CHECK)."""
        return self.rule.check(self.name) if self.rule is not None else None

    def quick(self, path_ok: Callable[[object], bool]) -> Callable[[object], bool]:
        """The fast path's check of a present value: True only if the model certainly keeps it as is."""
        if isinstance(self.rule, Path):
            test = path_ok  # fields.path_problem's verdict, whose wording a reject needs
        elif self.rule is not None:
            test = self.rule.quick()
        elif self.choices is not None:
            choices = self.choices
            test = lambda value: type(value) is str and value in choices  # noqa: E731
        else:
            kind = _python_type(self)
            test = lambda value: type(value) is kind  # noqa: E731
        if not self.nullable:
            return test
        return lambda value: value is None or test(value)


def _python_type(field: Declared) -> type:
    return next(t for t, name in _COPY_TYPES.items() if name == field.copy_type)


def _declared(name: str, info: Any) -> Declared | None:
    column = next((m for m in info.metadata if isinstance(m, Column)), None)
    if column is None:
        return None
    rule = next((m for m in info.metadata if isinstance(m, Chars | Path)), None)
    optional = get_origin(info.annotation) in (Union, types.UnionType)
    kind = next(a for a in get_args(info.annotation) if a is not type(None)) if optional else info.annotation
    choices = get_args(kind) if get_origin(kind) is Literal else None
    base = type(choices[0]) if choices else kind
    return Declared(
        name=name,
        column=column,
        nullable=optional and type(None) in get_args(info.annotation),
        default=None if info.is_required() else info.default,
        rule=rule,
        choices=choices,
        copy_type=_COPY_TYPES[base],
    )


#: The stored fields of an OCR result, in declaration order; image_path first.
STORED: tuple[Declared, ...] = tuple(
    d for d in (_declared(n, i) for n, i in ResultFields[BoxFields].model_fields.items()) if d is not None
)
#: The fields a new result replaces and result history keeps: all but the identity.
REPLACED: tuple[Declared, ...] = tuple(d for d in STORED if not d.column.identity)
#: Every stored field NULL, as a reject's staged row holds them.
NONE: dict[str, None] = dict.fromkeys(d.name for d in STORED)


def sql_lists() -> dict[str, sql.Composable]:
    """The column lists loader/sql/save.sql names the fields by (``{result_columns}`` ...)."""

    def each(template: str, fields: tuple[Declared, ...]) -> sql.Composed:
        return sql.SQL(", ").join(
            sql.SQL(template).format(
                name=sql.Identifier(f.name), key=sql.Literal(f.name), type=sql.SQL(f.column.sql_type)
            )
            for f in fields
        )

    return {
        # INSERT INTO ocr_executions (chain_id, {result_columns}) SELECT ..., {result_values} FROM judged
        "result_columns": each("{name}", STORED),
        "result_values": each("{name}::{type}", STORED),
        # The UPDATE of a replaced result: SET {replaced_set} FROM judged j
        "replaced_set": each("{name} = j.{name}::{type}", REPLACED),
        # The history row of a replaced result, read from its OCR row o.
        "kept_columns": each("{name}", REPLACED),
        "kept_values": each("o.{name}", REPLACED),
        # A displaced duplicate's raw, re-encoded: jsonb_build_object({raw_fields}, 'text_boxes', ...)
        "raw_fields": each("{key}, o.{name}", STORED),
    }
