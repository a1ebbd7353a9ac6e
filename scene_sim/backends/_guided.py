"""Guided decoding for local models: valid structured output by construction.

A local model cannot be trusted to emit well-formed JSON, and a 135M model
certainly cannot. Instead of asking for JSON and hoping, the backend *writes*
the JSON itself and consults the model only where the output has a real
choice: which enum value, ``true`` or ``false``, which integer, or the free
text inside a string. The result is valid against the schema by construction.

A schema is compiled to a small tree of nodes (:func:`compile_schema`) and
then run as a *program* (:func:`schema_program`): a generator that yields
operations for the model and receives their results:

* :class:`Emit` - forced text appended to the model's context (the JSON
  punctuation and keys). It needs no model call.
* :class:`Choose` - score each option as the continuation of the context
  (sum of token log-probs) and return the index of the best one.
* :class:`Generate` - sample free text (or digits) with stop conditions and
  return it; the text is *not* committed to the context, the program emits
  whatever it decides to keep.

The same protocol serves plain requests: free text is one :class:`Generate`
and a ``choices`` request one :class:`Choose`, so the worker that batches
operations across concurrent requests handles all three kinds uniformly.

Supported JSON-schema subset (anything else raises :class:`UnsupportedSchema`):

* ``type: object`` with ``properties`` (every property is emitted, in schema
  order; ``required`` and ``additionalProperties`` are accepted and need no
  enforcement because nothing else is ever emitted);
* ``enum`` and ``const`` of JSON scalars -> choice scoring;
* ``type: boolean`` -> choice between ``true`` and ``false``;
* ``type: null``;
* ``type: integer`` / ``number``: an ``enum``, or an integer range of at
  most :data:`MAX_RANGE_CHOICES` values -> choice scoring; otherwise digits
  are generated under a token mask and the value is clamped into
  ``minimum``..``maximum`` (``exclusiveMinimum`` / ``exclusiveMaximum``
  honoured);
* ``type: string`` with optional ``minLength`` / ``maxLength`` -> free text
  generated until a quote or newline, then JSON-escaped. Free strings are
  generated non-empty (at least one non-blank character) unless
  ``maxLength`` is 0, because an empty message is never a useful action;
* nullable values: ``type: [X, "null"]``, ``nullable: true`` or
  ``anyOf``/``oneOf`` of one schema plus ``{"type": "null"}`` -> the model
  first chooses ``null`` or a value;
* ``type: array`` with ``items`` and ``minItems == maxItems`` (a fixed length);
* local ``$ref`` into ``$defs`` / ``definitions`` (not recursive).

Annotations (``title``, ``description``, ``default``, ``examples``,
``format``, ...) are ignored; ``pattern`` and other validation keywords that
cannot be guaranteed are rejected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "END",
    "MAX_RANGE_CHOICES",
    "Arr",
    "Choose",
    "Emit",
    "Generate",
    "Literal",
    "Node",
    "Nullable",
    "Num",
    "Obj",
    "Op",
    "Program",
    "Str",
    "UnsupportedSchema",
    "choice_program",
    "compile_schema",
    "schema_program",
    "text_program",
]

#: Stands for "the end of the assistant turn" in :attr:`Choose.follow`; the
#: engine substitutes its chat template's end-of-turn marker.
END = "\x00<end-of-turn>\x00"

#: Integer ranges with at most this many values are decided by scoring every value.
MAX_RANGE_CHOICES = 32

#: Default token cap for one free string inside a schema.
STRING_MAX_TOKENS = 200

_IGNORED_KEYS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "format",
        "additionalProperties",
        "required",
        "$defs",
        "definitions",
        "readOnly",
        "writeOnly",
        "deprecated",
        "propertyOrdering",
        "nullable",
    }
)


class UnsupportedSchema(ValueError):
    """The schema uses a feature outside the guided-decoding subset."""


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True, slots=True)
class Emit:
    """Append forced text to the model's context (no model call)."""

    text: str


@dataclass(frozen=True, slots=True)
class Choose:
    """Score ``option + follow`` for every option; the result is the best index.

    Attributes:
        options: the candidate continuations (already rendered text; may
            contain :data:`END`).
        follow: text appended to every option for the scoring only (the next
            JSON delimiter, or :data:`END`); it makes options that are
            prefixes of each other (``1`` / ``10``) comparable. It is not emitted.

    """

    options: tuple[str, ...]
    follow: str = ""


@dataclass(frozen=True, slots=True)
class Generate:
    """Generate free text from the current context; the result is the text.

    Attributes:
        max_tokens: token limit.
        stop: stop strings; the text is cut before the first one.
        min_chars: until the stripped text has this many characters, tokens
            that would end the text (end-of-turn, stop strings, blank tokens)
            are banned.
        max_chars: the text is truncated to this many characters.
        kind: ``text``; ``integer`` or ``number`` restrict tokens to digits
            (and ``-`` first, ``.`` for numbers) and stop as soon as the
            model's unconstrained favourite token is not one of them.
        allow_negative: numbers may start with ``-``.
        stop_at_eos: the end-of-turn token ends the text.

    """

    max_tokens: int
    stop: tuple[str, ...] = ()
    min_chars: int = 0
    max_chars: int | None = None
    kind: str = "text"
    allow_negative: bool = True
    stop_at_eos: bool = True


Op = Emit | Choose | Generate
Program = Generator[Op, Any, Any]


# --------------------------------------------------------------------------- schema tree


@dataclass(frozen=True, slots=True)
class Literal:
    """One of a fixed set of JSON scalars (enum, const, boolean, small range)."""

    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Str:
    """A free string."""

    min_len: int = 1
    max_len: int | None = None


@dataclass(frozen=True, slots=True)
class Num:
    """A free integer or number, clamped into ``minimum``..``maximum``."""

    integer: bool
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True)
class Nullable:
    """``null`` or a value of ``inner``."""

    inner: Node


@dataclass(frozen=True, slots=True)
class Obj:
    """An object whose properties are all emitted in order."""

    props: tuple[tuple[str, Node], ...]


@dataclass(frozen=True, slots=True)
class Arr:
    """An array of exactly ``n`` items."""

    item: Node
    n: int


Node = Literal | Str | Num | Nullable | Obj | Arr


def _unsupported(path: str, why: str) -> UnsupportedSchema:
    return UnsupportedSchema(
        f"schema at {path or '<root>'}: {why}; local backends support objects with properties, enum/const, "
        "boolean, null, integer/number (enum, range or free digits), string (min/maxLength), nullable types "
        "and fixed-length arrays (minItems == maxItems) - see scene_sim.backends._guided"
    )


def compile_schema(schema: dict[str, Any]) -> Node:
    """Compile ``schema`` into a node tree.

    Raises:
        UnsupportedSchema: when the schema is outside the supported subset
            (the message names the offending location and keyword).

    """
    if not isinstance(schema, dict):
        raise _unsupported("", "the schema must be a JSON object")
    return _compile(schema, schema, "", ())


def _resolve(root: dict[str, Any], ref: str, path: str) -> dict[str, Any]:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            name = ref[len(prefix) :]
            defs = root.get(prefix[2:-1], {})
            if name in defs and isinstance(defs[name], dict):
                return defs[name]
    raise _unsupported(path, f"unresolvable $ref {ref!r} (only local #/$defs/... references)")


def _compile(s: dict[str, Any], root: dict[str, Any], path: str, seen: tuple[str, ...]) -> Node:
    if not isinstance(s, dict):
        raise _unsupported(path, "a sub-schema must be a JSON object")
    if "$ref" in s:
        ref = s["$ref"]
        if ref in seen:
            raise _unsupported(path, f"recursive $ref {ref!r}")
        target = _resolve(root, ref, path)
        merged = {**target, **{k: v for k, v in s.items() if k != "$ref"}}
        return _compile(merged, root, path, (*seen, ref))
    for key in ("anyOf", "oneOf"):
        if key in s:
            subs = s[key]
            non_null = [x for x in subs if not (isinstance(x, dict) and x.get("type") == "null")]
            if len(subs) == 2 and len(non_null) == 1:
                rest = {k: v for k, v in s.items() if k != key}
                return Nullable(_compile({**rest, **non_null[0]}, root, path, seen))
            if len(subs) == 1:
                rest = {k: v for k, v in s.items() if k != key}
                return _compile({**rest, **subs[0]}, root, path, seen)
            raise _unsupported(path, f"{key} is only supported as a single schema or one schema plus null")
    if s.get("nullable") is True:  # OpenAPI style
        return Nullable(_compile({k: v for k, v in s.items() if k != "nullable"}, root, path, seen))
    if "const" in s:
        return Literal((_scalar(s["const"], path),))
    types = s.get("type")
    type_list = [types] if isinstance(types, str) else list(types or [])
    if "enum" in s:
        values = tuple(_scalar(v, path) for v in s["enum"])
        if type_list:
            values = tuple(v for v in values if _json_type_ok(v, type_list))
        if not values:
            raise _unsupported(path, "enum has no value of the allowed type")
        return Literal(values)
    if not type_list:
        raise _unsupported(path, "missing 'type' (or enum/const)")
    if "null" in type_list and len(type_list) > 1:
        others = [t for t in type_list if t != "null"]
        if len(others) != 1:
            raise _unsupported(path, f"union type {type_list} (only one type plus null is supported)")
        return Nullable(_compile({**s, "type": others[0]}, root, path, seen))
    if len(type_list) != 1:
        raise _unsupported(path, f"union type {type_list}")
    kind = type_list[0]
    handled = {"type", "enum", "const"}
    node: Node
    if kind == "null":
        node = Literal((None,))
    elif kind == "boolean":
        node = Literal((True, False))
    elif kind in ("integer", "number"):
        handled |= {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
        node = _number(s, kind == "integer", path)
    elif kind == "string":
        handled |= {"minLength", "maxLength"}
        max_len = s.get("maxLength")
        min_len = int(s.get("minLength", 1 if max_len != 0 else 0))
        min_len = max(min_len, 1) if max_len != 0 else 0
        if max_len is not None and int(max_len) < min_len:
            raise _unsupported(path, "maxLength < minLength")
        node = Str(min_len=min_len, max_len=None if max_len is None else int(max_len))
    elif kind == "object":
        handled |= {"properties"}
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise _unsupported(path, "'properties' must be an object")
        node = Obj(tuple((name, _compile(sub, root, f"{path}.{name}", seen)) for name, sub in props.items()))
    elif kind == "array":
        handled |= {"items", "minItems", "maxItems"}
        lo, hi = s.get("minItems"), s.get("maxItems")
        if lo is None or hi is None or int(lo) != int(hi):
            raise _unsupported(path, "arrays need a fixed length (minItems == maxItems)")
        if int(lo) > 0 and not isinstance(s.get("items"), dict):
            raise _unsupported(path, "arrays need a single 'items' schema")
        item = _compile(s["items"], root, f"{path}[]", seen) if int(lo) > 0 else Literal((None,))
        node = Arr(item, int(lo))
    else:
        raise _unsupported(path, f"unknown type {kind!r}")
    extra = sorted(set(s) - handled - _IGNORED_KEYS)
    if extra:
        raise _unsupported(path, f"keyword(s) {', '.join(extra)} cannot be guaranteed by guided decoding")
    return node


def _scalar(v: Any, path: str) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise _unsupported(path, f"enum/const value {v!r} is not a JSON scalar")


def _json_type_ok(v: Any, types: list[str]) -> bool:
    checks = {
        "null": v is None,
        "boolean": isinstance(v, bool),
        "integer": isinstance(v, int) and not isinstance(v, bool),
        "number": isinstance(v, int | float) and not isinstance(v, bool),
        "string": isinstance(v, str),
    }
    return any(checks.get(t, False) for t in types)


def _number(s: dict[str, Any], integer: bool, path: str) -> Node:
    lo = s.get("minimum")
    hi = s.get("maximum")
    xlo, xhi = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
    if integer:
        if xlo is not None:
            lo = max(lo, math.floor(xlo) + 1) if lo is not None else math.floor(xlo) + 1
        if xhi is not None:
            hi = min(hi, math.ceil(xhi) - 1) if hi is not None else math.ceil(xhi) - 1
        lo = None if lo is None else math.ceil(lo)
        hi = None if hi is None else math.floor(hi)
        if lo is not None and hi is not None:
            if hi < lo:
                raise _unsupported(path, "empty integer range")
            if hi - lo + 1 <= MAX_RANGE_CHOICES:
                return Literal(tuple(range(int(lo), int(hi) + 1)))
        return Num(True, lo, hi)
    if xlo is not None or xhi is not None:
        raise _unsupported(path, "exclusiveMinimum/exclusiveMaximum on a number (use integer or minimum/maximum)")
    if lo is not None and hi is not None and hi < lo:
        raise _unsupported(path, "empty number range")
    return Num(False, lo, hi)


# --------------------------------------------------------------------------- programs


def _dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def text_program(max_tokens: int, stop: tuple[str, ...] = ()) -> Program:
    """Free text: one :class:`Generate` (never empty unless ``max_tokens`` is 0)."""
    text = yield Generate(max_tokens=max_tokens, stop=tuple(stop), min_chars=1 if max_tokens > 0 else 0)
    return text


def choice_program(choices: tuple[str, ...]) -> Program:
    """A closed set of answers: one :class:`Choose`; returns the chosen string.

    Options are scored as they are (callers often pass partial answers such
    as ``{"action": "message"``). Only when one option is a prefix of another
    (``no`` / ``no-op``) is the end-of-turn marker appended to every option,
    so the shorter one is not favoured merely for being shorter.
    """
    ambiguous = any(a != b and b.startswith(a) for a in choices for b in choices)
    index = yield Choose(tuple(choices), END if ambiguous else "")
    return choices[index]


def schema_program(node: Node, max_tokens: int = 512, string_max_tokens: int = STRING_MAX_TOKENS) -> Program:
    """Produce a value of ``node`` by construction; returns the Python value.

    Args:
        node: the compiled schema.
        max_tokens: total budget for generated free text (strings share it).
        string_max_tokens: cap for a single free string.

    """
    budget = [max(0, int(max_tokens))]
    value = yield from _value(node, END, budget, string_max_tokens)
    return value


def _value(node: Node, follow: str, budget: list[int], cap: int) -> Program:
    if isinstance(node, Literal):
        if len(node.values) == 1:
            v = node.values[0]
        else:
            index = yield Choose(tuple(_dumps(v) for v in node.values), follow)
            v = node.values[index]
        yield Emit(_dumps(v))
        return v
    if isinstance(node, Nullable):
        opener = {Str: '"', Obj: "{", Arr: "["}.get(type(node.inner))
        if isinstance(node.inner, Literal):
            return (yield from _value(Literal((*node.inner.values, None)), follow, budget, cap))
        if opener is not None:
            index = yield Choose((opener, "null" + follow))
            if index == 1:
                yield Emit("null")
                return None
            return (yield from _value(node.inner, follow, budget, cap))
        assert isinstance(node.inner, Num)
        candidate = yield from _free_number(node.inner)
        index = yield Choose((_dumps(candidate), "null"), follow)
        v = candidate if index == 0 else None
        yield Emit(_dumps(v))
        return v
    if isinstance(node, Num):
        v = yield from _free_number(node)
        yield Emit(_dumps(v))
        return v
    if isinstance(node, Str):
        yield Emit('"')
        limit = min(budget[0], cap)
        if node.max_len is not None:
            limit = min(limit, node.max_len + 8)
        if node.min_len > 0:
            limit = max(limit, 8)
        text = ""
        if node.max_len != 0 and limit > 0:
            text = yield Generate(
                max_tokens=limit,
                stop=('"', "\n"),
                min_chars=node.min_len,
                max_chars=node.max_len,
            )
            budget[0] = max(0, budget[0] - limit)
            text = text.strip()
            if node.max_len is not None:
                text = text[: node.max_len]
        if len(text) < node.min_len:  # only when the model was cut off: pad to stay valid
            text = text + "." * (node.min_len - len(text))
        yield Emit(_dumps(text)[1:])
        return text
    if isinstance(node, Obj):
        yield Emit("{")
        out: dict[str, Any] = {}
        for i, (name, sub) in enumerate(node.props):
            yield Emit(("" if i == 0 else ", ") + _dumps(name) + ": ")
            nxt = "," if i < len(node.props) - 1 else "}"
            out[name] = yield from _value(sub, nxt, budget, cap)
        yield Emit("}")
        return out
    if isinstance(node, Arr):
        yield Emit("[")
        items: list[Any] = []
        for i in range(node.n):
            if i:
                yield Emit(", ")
            nxt = "," if i < node.n - 1 else "]"
            items.append((yield from _value(node.item, nxt, budget, cap)))
        yield Emit("]")
        return items
    raise TypeError(f"unknown node {node!r}")  # pragma: no cover


def _free_number(node: Num) -> Program:
    allow_negative = node.minimum is None or node.minimum < 0
    text = yield Generate(max_tokens=10, kind="integer" if node.integer else "number", allow_negative=allow_negative)
    value: float | int
    try:
        value = int(text) if node.integer else float(text)
        if not math.isfinite(value):
            raise ValueError(text)
    except ValueError:
        value = _fallback_number(text, node)
    if node.minimum is not None and value < node.minimum:
        value = node.minimum
    if node.maximum is not None and value > node.maximum:
        value = node.maximum
    return int(value) if node.integer else value


def _fallback_number(text: str, node: Num) -> float | int:
    """The longest numeric prefix of ``text``, else the range's lower end or 0."""
    for end in range(len(text), 0, -1):
        try:
            v = int(text[:end]) if node.integer else float(text[:end])
        except ValueError:
            continue
        if math.isfinite(v):
            return v
    if node.minimum is not None:
        return node.minimum
    if node.maximum is not None and node.maximum < 0:
        return node.maximum
    return 0
