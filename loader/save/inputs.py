"""What an input of a call is, and its raw bytes: what a reject keeps of it."""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from typing import Any

from loader.models import OCRResult

#: One input: an OCRResult, a JSON-decoded dict, or a raw JSON line.
Input = OCRResult | Mapping[str, Any] | str | bytes

# How much of an offending value a message quotes, in characters.
QUOTE_CHARS = 60

# Quotes offending values without walking all of them: plain repr() of a deeply
# nested list raises RecursionError, and of a 1 MB text copies it all first.
QUOTER = reprlib.Repr()
QUOTER.maxlevel = 3
QUOTER.maxstring = QUOTE_CHARS
QUOTER.maxother = QUOTE_CHARS


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
            return QUOTER.repr(item).encode("utf-8", "surrogatepass")
