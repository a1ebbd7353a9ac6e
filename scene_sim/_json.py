"""Fast JSON for event logs: orjson, with the standard library's error type.

Event logs are the bulk of a run directory (every prompt is logged in full),
and encoding them on the event loop at the end of each episode delayed every
call in flight; orjson encodes about five times and decodes about four times
faster than the standard library. Lines are compact JSON; readers of either
layout (``{"a": 1}`` or ``{"a":1}``) are unaffected.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

__all__ = ["JSONDecodeError", "decode_json", "dumps_lines", "loads"]

#: Raised by :func:`loads` (``.msg``, ``.pos``).
JSONDecodeError = json.JSONDecodeError

_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item):
        return item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _line(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # A lone surrogate from a decoded model answer is not UTF-8; the standard
        # library escapes it (\\udXXX), which reads back as the same string.
        return (json.dumps(obj, default=_default) + "\n").encode("ascii")


def dumps_lines(objs: list[Any]) -> bytes:
    """One JSON line per object, UTF-8 encoded (JSON Lines)."""
    return b"".join(_line(o) for o in objs)


def loads(text: str | bytes) -> Any:
    """Parse one JSON document.

    Raises:
        JSONDecodeError: on invalid JSON.

    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # the standard library reads what orjson refuses: escaped lone surrogates, NaN
        return json.loads(text)


_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\n?(.*?)```", re.DOTALL)


def decode_json(text: str, schema: dict[str, Any] | None = None) -> Any:
    """Decode a JSON value from model output, tolerating code fences and chatter.

    Args:
        text: the model's text.
        schema: the requested schema; when it asks for an object, only an
            object is accepted.

    Returns:
        The decoded value, or None when nothing usable was found.

    """
    if not text:
        return None
    candidates: list[str] = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    want_object = bool(schema) and (schema.get("type") == "object" or "properties" in schema)
    decoder = json.JSONDecoder()
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            value = None
            for i, char in enumerate(candidate):
                if char in "{[":
                    try:
                        value, _ = decoder.raw_decode(candidate, i)
                        break
                    except ValueError:
                        continue
            if value is None:
                continue
        if want_object and not isinstance(value, dict):
            continue
        return value
    return None
