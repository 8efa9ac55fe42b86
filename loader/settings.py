"""The loader's server settings, read from the environment the same way everywhere.

``Settings()`` reads ``LOADER_WORK_MEM``, ``LOADER_STATEMENT_TIMEOUT`` and
``LOADER_LOCK_TIMEOUT`` (pydantic-settings; unset or empty ones take the
defaults, values are stripped); ``Settings(statement_timeout="5s")`` takes the
fields given by name over the environment. ``save_batch`` and ``save_judged``
without ``settings=``, ``loader load`` and the Celery workers (whose
``CeleryConfig`` is a ``Settings`` with more fields) all read them so, at the
call. A value PostgreSQL would refuse, or would read otherwise than meant (a
timeout under a millisecond is 0: no timeout at all), is a ConfigurationError
naming the variable, before anything is sent.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loader.errors import ConfigurationError

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


class Settings(BaseSettings):
    """Per-transaction server settings the loader applies (SET LOCAL, never session-wide).

    A timeout the role or session sets stricter stays in force: the loader may
    tighten a DBA's bound, never loosen it.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        validate_by_name=True,
        env_ignore_empty=True,
        str_strip_whitespace=True,
        extra="forbid",
        # The names as documented (LOADER_STATEMENT_TIMEOUT), so that current_settings
        # can tell a change by looking at those names alone.
        case_sensitive=True,
    )

    # Memory for the merge's sorts and hashes; the 4MB default spills 10,000-image
    # calls to disk. Per sort node, for this transaction only.
    work_mem: MemorySize = Field("64MB", validation_alias="LOADER_WORK_MEM")
    # Bound on any one statement of the call: a 100,000-image call merges in a
    # few seconds on 2 cores, so a minute means something is stuck.
    statement_timeout: Duration = Field("60s", validation_alias="LOADER_STATEMENT_TIMEOUT")
    # Bound on waiting for a lock (another call of the same batch holds it while
    # it loads). Longer than statement_timeout: the holder finishes or is cancelled first.
    lock_timeout: Duration = Field("90s", validation_alias="LOADER_LOCK_TIMEOUT")

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


#: The variables Settings reads (its fields' names in the environment).
ENVIRONMENT = tuple(
    str(field.validation_alias) for field in Settings.model_fields.values() if field.validation_alias
)


def current_settings() -> Settings:
    """``Settings()`` as the environment says now: what a save without ``settings=`` uses.

    Read again only when one of the variables changed: pydantic-settings takes
    0.4-3 ms per read on 2 busy cores (as long as a small save call), the check
    10-20 microseconds. A bad value raises ConfigurationError at every call.
    """
    return _read(tuple(os.environ.get(name) for name in ENVIRONMENT))


@lru_cache(maxsize=8)
def _read(values: tuple[str | None, ...]) -> Settings:
    del values  # the cache key: Settings() reads the same variables
    return Settings()
