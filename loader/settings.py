"""The loader's configuration, read from the environment the same way everywhere:
the server settings (``Settings``) and the validation limits (``Limits``).

``Settings()`` reads ``LOADER_WORK_MEM``, ``LOADER_STATEMENT_TIMEOUT`` and
``LOADER_LOCK_TIMEOUT`` (pydantic-settings; unset or empty ones take the
defaults, values are stripped); ``Settings(statement_timeout="5s")`` takes the
fields given by name over the environment. ``save_batch`` and ``save_judged``
without ``settings=``, ``loader load`` and the Celery workers (whose
``CeleryConfig`` is a ``Settings`` with more fields) all read them so, at the
call. A value PostgreSQL would refuse, or would read otherwise than meant (a
timeout under a millisecond is 0: no timeout at all), is a ConfigurationError
naming the variable, before anything is sent. ``Limits`` is read the same way
(``limits=`` of save_batch, loader.save.pipeline.judge and loader.save.chunks.load_chunks).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Annotated, Any, Self, TypeVar

from pydantic import BeforeValidator, Field, ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loader.errors import ConfigurationError
from loader.fields import MAX_BBOX_POINTS, MAX_TEXT_CHARS

# A GUC value as PostgreSQL parses it: a number, optional blanks, an optional
# unit (case-sensitive, as the server reads it).
_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)")
# Time units in milliseconds (a bare number is milliseconds, the timeouts' base unit).
_TIME_UNITS_MS = {"": 1.0, "us": 0.001, "ms": 1.0, "s": 1e3, "min": 6e4, "h": 3.6e6, "d": 8.64e7}
# Memory units in kilobytes (a bare number is kilobytes, work_mem's base unit).
_MEMORY_UNITS_KB = {"": 1.0, "B": 1 / 1024, "kB": 1.0, "MB": 1024.0, "GB": 1024.0**2, "TB": 1024.0**3}
# The largest value either setting takes: INT_MAX of its base unit (ms, kB).
_INT_MAX = 2**31 - 1
# work_mem's floor in kB: PostgreSQL refuses less.
_WORK_MEM_MIN_KB = 64
# Boxes one OCR result may hold by default (Limits.max_boxes).
DEFAULT_MAX_BOXES = 10_000


def _quantity(value: Any, units: dict[str, float], kind: str) -> tuple[str, float]:
    """``value`` as a GUC string, and its size in the setting's base unit."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a {kind} such as {_EXAMPLES[kind]}, got a {type(value).__name__}")
    text = value.strip()
    match = _QUANTITY.fullmatch(text)
    if match is None or match["unit"] not in units:
        raise ValueError(
            f"not a PostgreSQL {kind}: a number with one of the units {', '.join(u for u in units if u)} "
            f"(case matters), e.g. {_EXAMPLES[kind]}"
        )
    return text, float(match["number"]) * units[match["unit"]]


_EXAMPLES = {"duration": "'500ms', '60s' or '2min'", "memory size": "'64MB' or '512kB'"}


def _duration(value: Any) -> str:
    text, ms = _quantity(value, _TIME_UNITS_MS, "duration")
    if 0 < ms < 1:
        # PostgreSQL rounds it to 0, which turns the timeout off instead of tightening it.
        raise ValueError("is under a millisecond, which PostgreSQL rounds to 0 (no timeout); use 1ms or more")
    if ms > _INT_MAX:
        raise ValueError(f"is above PostgreSQL's limit of {_INT_MAX} ms (about 24 days); use 0 for none")
    return text


def _memory(value: Any) -> str:
    text, kb = _quantity(value, _MEMORY_UNITS_KB, "memory size")
    if not _WORK_MEM_MIN_KB <= kb <= _INT_MAX:
        raise ValueError(f"is outside PostgreSQL's range for work_mem: {_WORK_MEM_MIN_KB}kB to 2TB")
    return text


#: A timeout as PostgreSQL takes it ('60s', '1500ms', '2min'; a bare number is milliseconds; 0: none).
Duration = Annotated[str, BeforeValidator(_duration)]
#: A memory size as PostgreSQL takes it ('64MB', '512kB'; a bare number is kilobytes).
MemorySize = Annotated[str, BeforeValidator(_memory)]


def describe_errors(exc: ValidationError, variables: dict[str, str] | None = None) -> str:
    """A pydantic error as one line per bad value: ``LOADER_POOL_MAX='many': ...``
    (a field given by name: ``pool_max (LOADER_POOL_MAX)=...``, from ``variables``)."""
    parts = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(p) for p in err["loc"])
        if variables and name in variables:
            name = f"{name} ({variables[name]})"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name}={err['input']!r}: {message}" if name else message)
    return "; ".join(parts)


class _FromEnvironment(BaseSettings):
    """Read from the LOADER_* variables the fields name, or given by name; a bad value is a
    ConfigurationError naming its variable."""

    model_config = SettingsConfigDict(
        frozen=True,
        validate_by_name=True,
        env_ignore_empty=True,
        str_strip_whitespace=True,
        extra="forbid",
        # The names as documented (LOADER_STATEMENT_TIMEOUT), so that current()
        # can tell a change by looking at those names alone.
        case_sensitive=True,
    )

    @model_validator(mode="wrap")
    @classmethod
    def _configuration_error(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Every caller (save_batch, the CLI, a worker) gets the loader's own error,
        # naming the variable, whichever way the settings were read.
        try:
            return handler(data)
        except ValidationError as exc:
            variables = {
                name: field.validation_alias
                for name, field in cls.model_fields.items()
                if isinstance(field.validation_alias, str)
            }
            raise ConfigurationError(describe_errors(exc, variables)) from None


class Settings(_FromEnvironment):
    """Per-transaction server settings the loader applies (SET LOCAL, never session-wide).

    A timeout the role or session sets stricter stays in force: the loader may
    tighten a DBA's bound, never loosen it.
    """

    # Memory for the merge's sorts and hashes; the 4MB default spills 10,000-image
    # calls to disk. Per sort node, for this transaction only.
    work_mem: MemorySize = Field("64MB", validation_alias="LOADER_WORK_MEM")
    # Bound on any one statement of the call: a 100,000-image call merges in a
    # few seconds on 2 cores, so a minute means something is stuck.
    statement_timeout: Duration = Field("60s", validation_alias="LOADER_STATEMENT_TIMEOUT")
    # Bound on waiting for a lock (another call of the same batch holds it while
    # it loads). Longer than statement_timeout: the holder finishes or is cancelled first.
    lock_timeout: Duration = Field("90s", validation_alias="LOADER_LOCK_TIMEOUT")


class Limits(_FromEnvironment):
    """How much of one OCR result the loader stores: the validation configuration.

    A result beyond a limit is stored as failed, with a reason naming the limit and
    its variable (never rejected, never fatal to the call). ``Limits()`` reads
    LOADER_MAX_BOXES, LOADER_MAX_TEXT_CHARS and LOADER_MAX_BBOX_POINTS the way
    ``Settings()`` reads its variables; ``save_batch(..., limits=Limits(max_boxes=500))``,
    ``loader load`` (the environment) and the Celery workers (``CeleryConfig`` is also a
    ``Limits``) all judge with it. The text and bbox limits may only tighten the ones
    loader/fields.py declares, which the columns and the jsonb values are sized for.
    """

    # Boxes one result may hold. OCR of a dense page yields a few thousand words;
    # tens of thousands is a runaway detector, whose rows would swamp the batch.
    max_boxes: Annotated[int, Field(ge=0)] = Field(DEFAULT_MAX_BOXES, validation_alias="LOADER_MAX_BOXES")
    max_text_chars: Annotated[int, Field(ge=1, le=MAX_TEXT_CHARS)] = Field(
        MAX_TEXT_CHARS, validation_alias="LOADER_MAX_TEXT_CHARS"
    )
    max_bbox_points: Annotated[int, Field(ge=1, le=MAX_BBOX_POINTS)] = Field(
        MAX_BBOX_POINTS, validation_alias="LOADER_MAX_BBOX_POINTS"
    )

    @property
    def tightened(self) -> bool:
        """Whether a box limit is below the declared one (only then is each box measured again)."""
        return self.max_text_chars < MAX_TEXT_CHARS or self.max_bbox_points < MAX_BBOX_POINTS


T = TypeVar("T", bound=_FromEnvironment)


def _variables(cls: type[_FromEnvironment]) -> tuple[str, ...]:
    """The variables ``cls`` reads (its fields' names in the environment)."""
    return tuple(str(f.validation_alias) for f in cls.model_fields.values() if f.validation_alias)


#: The variables Settings reads.
ENVIRONMENT = _variables(Settings)


def current_settings() -> Settings:
    """``Settings()`` as the environment says now: what a save without ``settings=`` uses.

    Read again only when one of the variables changed: pydantic-settings takes
    0.4-3 ms per read on 2 busy cores (as long as a small save call), the check
    10-20 microseconds. A bad value raises ConfigurationError at every call.
    """
    return _current(Settings)


def current_limits() -> Limits:
    """``Limits()`` as the environment says now: what judging without ``limits=`` uses."""
    return _current(Limits)


def _current(cls: type[T]) -> T:
    current: T = _read(cls, tuple(os.environ.get(name) for name in _variables(cls)))
    return current


@lru_cache(maxsize=16)
def _read(cls: type[T], values: tuple[str | None, ...]) -> T:
    del values  # the cache key: cls() reads the same variables
    return cls()
