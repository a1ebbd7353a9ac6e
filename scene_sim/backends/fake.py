"""A network-free stand-in backend for tests and throughput benchmarks.

``fake/<anything>?latency_ms=100`` sleeps ``latency_ms`` (on the event loop,
never blocking it) and returns the smallest answer that is valid for the
request: an instance of ``request.schema``, the first of ``request.choices``,
or a fixed reply text. Token counts are ``ceil(characters / 4)``.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, ClassVar

from scene_sim.backends.base import Backend, Capabilities, GenerateRequest, GenerateResponse, Usage

__all__ = ["FakeBackend", "instance_of"]

_MAX_DEPTH = 32


def _resolve_ref(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#/"):
        return {}
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, dict) else {}


def instance_of(schema: dict[str, Any] | bool | None, root: dict[str, Any] | None = None, _depth: int = 0) -> Any:
    """Return a minimal JSON value valid against ``schema``.

    Rules: ``const`` is taken as is, enums take their first value, nullable
    schemas give null, strings are ``""`` (or ``minLength`` x's), numbers
    their ``minimum`` (else 0), booleans false, objects carry every required
    property, arrays hold ``minItems`` items. ``$ref`` (``#/$defs/...``),
    ``allOf`` / ``anyOf`` / ``oneOf`` and type lists are followed.

    Args:
        schema: a JSON Schema (dict; ``True`` / None accept anything).
        root: the document ``$ref`` pointers resolve against (default: ``schema``).

    Returns:
        A JSON-serialisable value.

    """
    if not isinstance(schema, dict) or _depth > _MAX_DEPTH:
        return None
    root = schema if root is None else root
    if "$ref" in schema:
        target = _resolve_ref(str(schema["$ref"]), root)
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return instance_of(merged, root, _depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("nullable") is True:
        return None
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            if any(isinstance(o, dict) and o.get("type") == "null" for o in options):
                return None
            return instance_of(options[0], root, _depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                part = _resolve_ref(part["$ref"], root) if "$ref" in part else part
                for k, v in part.items():
                    if k == "properties":
                        merged["properties"] = {**merged.get("properties", {}), **v}
                    elif k == "required":
                        merged["required"] = [*merged.get("required", []), *v]
                    else:
                        merged.setdefault(k, v)
        return instance_of(merged, root, _depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        if "null" in kind or not kind:
            return None
        kind = kind[0]
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "null":
        return None
    if kind == "boolean":
        return False
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        if "minimum" in schema:
            value: float = schema["minimum"]
        elif "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            value = schema["exclusiveMinimum"] + (1 if kind == "integer" else 1e-6)
        elif "maximum" in schema and schema["maximum"] < 0:
            value = schema["maximum"]
        else:
            value = 0
        return math.ceil(value) if kind == "integer" else value
    if kind == "array":
        items = schema.get("items")
        prefix = schema.get("prefixItems") or []
        count = int(schema.get("minItems", 0))
        out = [instance_of(p, root, _depth + 1) for p in prefix[:count]]
        out += [instance_of(items, root, _depth + 1) for _ in range(count - len(out))]
        return out
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: instance_of(props.get(name, {}), root, _depth + 1) for name in schema.get("required") or []}
    return None


def _count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


class FakeBackend(Backend):
    """A schema-valid stand-in with configurable latency, no network, no model.

    Args:
        model: any name (``fake/<name>``).
        base_url: ignored.
        latency_ms: how long each call sleeps (``asyncio.sleep``), default 0.
        reply: the text answered to plain (no schema, no choices) requests.

    """

    provider: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = Capabilities(structured_output=True, scores_choices=False, seed=True)
    default_max_connections: ClassVar[int] = 1024
    valid_options: ClassVar[frozenset[str] | None] = frozenset({"latency_ms", "reply"})

    def __init__(
        self, model: str = "", *, base_url: str | None = None, latency_ms: float = 0, reply: str = "ok", **options: Any
    ) -> None:
        super().__init__(model, base_url=base_url, latency_ms=latency_ms, reply=reply, **options)
        self.latency_ms = float(latency_ms)
        self.reply = str(reply)

    def cache_identity(self) -> dict[str, Any]:
        """Return provider, model and the reply text (latency does not change answers)."""
        return {**super().cache_identity(), "reply": self.reply}

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        """Sleep ``latency_ms`` and answer with a minimal valid output."""
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000.0)
        parsed: Any = None
        if request.schema is not None:
            parsed = instance_of(request.schema)
            text = json.dumps(parsed, ensure_ascii=False)
        elif request.choices:
            text = request.choices[0]
        else:
            text = self.reply
        prompt = (request.system or "") + "".join(m.get("content", "") for m in request.messages)
        usage = Usage(input_tokens=_count_tokens(prompt), output_tokens=_count_tokens(text))
        return GenerateResponse(text=text, parsed=parsed, usage=usage, model=self.model_string, finish_reason="stop")
