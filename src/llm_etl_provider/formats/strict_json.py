"""Strict JSON (RFC 8259) in and out: what the worker takes from its input and its model, and what it writes.

Python's ``json`` accepts ``NaN`` and ``Infinity``, keeps the last of repeated keys, lets a ``\\ud800`` escape
through as a lone surrogate, and raises ``ValueError`` or ``RecursionError`` (not ``JSONDecodeError``) for
numbers over 4,300 digits or deep nesting. :func:`loads` turns each of these into a :class:`JsonValueError`
whose message names the problem and its column, never the value; :func:`dumps_line` refuses ``NaN`` and
``Infinity`` on the way out.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64  # nesting of arrays and objects; deeper values are refused, not parsed


class JsonValueError(ValueError):
    """The text is not strict JSON, or holds a value the worker does not take (the message holds no value)."""


def _no_constants(name: str) -> Any:
    raise JsonValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonValueError("a number beyond a double's range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise JsonValueError("an object repeats a key")
    return value


def loads(text: str) -> Any:
    """Parse strict JSON: no NaN or Infinity (nor a number beyond a double), no repeated keys, no lone
    surrogates, at most MAX_DEPTH deep."""
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth_before_parsing(text) > MAX_DEPTH:
        raise JsonValueError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(
            text, parse_constant=_no_constants, parse_float=_finite, object_pairs_hook=_unique_keys
        )
    except json.JSONDecodeError as exc:
        raise JsonValueError(f"{exc.msg} at column {exc.colno}") from None
    except JsonValueError:
        raise
    except (ValueError, RecursionError) as exc:  # a number over the interpreter's digit limit, say
        raise JsonValueError(f"a value JSON parsing cannot hold ({type(exc).__name__})") from None
    if "\\u" in text and _has_lone_surrogate(value):
        raise JsonValueError("a string holds a lone surrogate escape (not Unicode)")
    return value


def dumps_line(value: Any) -> bytes:
    """One strict JSON line, UTF-8, newline-terminated."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _depth_before_parsing(text: str) -> int:
    """The deepest nesting of brackets outside strings: checked before parsing, which recurses."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
