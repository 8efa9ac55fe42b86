"""Refusing a DSN libpq cannot parse, without echoing the password it holds.

libpq's parse errors quote pieces of the DSN, the password included: for
``postgresql://u:my secret@host/db`` it says ``unexpected spaces found in "my
secret"``, and for a broken IPv6 host it quotes the whole URI. A pool given
such a DSN logs that message from its worker threads on every attempt, and an
error built from it (or chained to it) carries it into logs and tracebacks.
So DSNs are parsed here first, and a failure is reported with every quoted
piece of the DSN masked, except connection option names.
"""

from __future__ import annotations

import re
from functools import cache

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from loader.errors import ConfigurationError, redact_dsn

_QUOTED = re.compile(r'"([^"]*)"')


@cache
def _option_names() -> frozenset[str]:
    return frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())


def _mask(message: str) -> str:
    def sub(m: re.Match[str]) -> str:
        return m.group(0) if m.group(1) in _option_names() else '"***"'

    return redact_dsn(_QUOTED.sub(sub, message))


def check_dsn(conninfo: str) -> None:
    """Raise ConfigurationError, quoting none of ``conninfo``, if libpq cannot parse it."""
    detail = None
    try:
        conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        detail = _mask(lines[0] if lines else type(exc).__name__)
    if detail is not None:
        # Raised outside the except block: the original error quotes the DSN,
        # and as the new one's context it would show in every traceback.
        raise ConfigurationError(
            f"the DSN cannot be parsed: {detail}; percent-encode special characters of a URI "
            "(a space is %20) or quote values of a key=value DSN"
        )
