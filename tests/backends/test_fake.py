"""The fake backend and its schema -> minimal instance generator."""

from __future__ import annotations

import time

import pytest

from scene_sim.backends import GenerateRequest, create_backend
from scene_sim.backends.fake import FakeBackend, instance_of


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, ""),
        ({"type": "string", "minLength": 3}, "xxx"),
        ({"type": "integer"}, 0),
        ({"type": "integer", "minimum": 2}, 2),
        ({"type": "integer", "exclusiveMinimum": 2}, 3),
        ({"type": "number", "minimum": 0.5}, 0.5),
        ({"type": "boolean"}, False),
        ({"type": "null"}, None),
        ({"enum": ["b", "a"]}, "b"),
        ({"const": 7}, 7),
        ({"type": ["string", "null"]}, None),
        ({"type": "string", "nullable": True}, None),
        ({"anyOf": [{"type": "integer"}, {"type": "null"}]}, None),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, 0),
        ({"type": "array", "items": {"type": "integer"}}, []),
        ({"type": "array", "items": {"enum": ["x"]}, "minItems": 2}, ["x", "x"]),
        (
            {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["b"]},
            {"b": 0},
        ),
    ],
)
def test_instance_of(schema: dict, expected: object) -> None:
    assert instance_of(schema) == expected


def test_instance_of_pydantic_style_refs() -> None:
    schema = {
        "$defs": {
            "Kind": {"enum": ["message", "react"], "type": "string"},
            "Inner": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"]},
        },
        "type": "object",
        "properties": {
            "kind": {"$ref": "#/$defs/Kind"},
            "inner": {"$ref": "#/$defs/Inner"},
            "both": {"allOf": [{"$ref": "#/$defs/Inner"}]},
            "opt": {"type": "string"},
        },
        "required": ["kind", "inner", "both"],
    }
    assert instance_of(schema) == {"kind": "message", "inner": {"n": 1}, "both": {"n": 1}}


def test_instance_of_survives_recursive_schemas() -> None:
    schema = {
        "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}, "required": ["next"]}},
        "$ref": "#/$defs/Node",
    }
    instance_of(schema)  # terminates


async def test_fake_latency_and_tokens() -> None:
    backend = FakeBackend("m", latency_ms=50, reply="hi!")
    start = time.monotonic()
    resp = await backend.generate(GenerateRequest(messages=({"role": "user", "content": "x" * 40},), system="y" * 8))
    assert time.monotonic() - start >= 0.045
    assert resp.text == "hi!" and resp.usage.input_tokens == 12 and resp.usage.output_tokens == 1


async def test_fake_does_not_block_the_loop(loop_ticks) -> None:
    backend = create_backend("fake/m?latency_ms=200", cache_mode="off")
    async with loop_ticks(0.01) as ticks:
        await backend.generate(GenerateRequest(messages=({"role": "user", "content": "x"},)))
    assert ticks.count >= 10
