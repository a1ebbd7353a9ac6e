"""HFBackend on a tiny random Llama built offline (no hub, no network)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from scene_sim.actions import ACTION_SCHEMA, parse_action
from scene_sim.backends import _guided as guided
from scene_sim.backends.base import BackendError, GenerateRequest
from scene_sim.backends.hf import HFBackend, _Seq
from scene_sim.errors import SceneSimError

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Alice: anyone up for a hike on Saturday? Bob: sure, where should we meet?",
    "The group chat has unwritten rules: keep messages short and answer questions directly.",
    '{"action": "message", "content": "hello there", "target_turn_id": null}',
    '{"action": "react", "content": "ok", "target_turn_id": 12}',
    "no-op message react true false null 0 1 2 3 4 5 6 7 8 9 10 42 123",
    "Carol said thanks, Dave laughed, and everyone agreed to bring snacks and water.",
]
SYSTEM = "You are Sam, in a group chat with friends. Keep messages short."
MESSAGES = ({"role": "user", "content": "[t1] Alice: anyone up for a hike?\n[t2] Bob: sure, where?\nYour turn."},)


def _build_tokenizer(template: str | None) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    if template:
        fast.chat_template = template
    return fast


def _build_model(folder: Path, *, template: str | None = CHATML, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tokenizer(template)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.3,  # peaked logits: greedy decoding has no near-ties
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def backend(tiny_dir: Path):
    b = HFBackend(str(tiny_dir), max_batch=8, batch_wait_ms=20, device="cpu")
    b.load()
    yield b
    asyncio.run(b.aclose())


def _req(**kw: Any) -> GenerateRequest:
    kw.setdefault("messages", MESSAGES)
    kw.setdefault("system", SYSTEM)
    return GenerateRequest(**kw)


# --------------------------------------------------------------------------- a small validator for the test schemas


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    if "anyOf" in schema:
        return any(_valid(value, s) for s in schema["anyOf"])
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        ok = {
            "null": value is None,
            "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool),
            "string": isinstance(value, str),
            "object": isinstance(value, dict),
            "array": isinstance(value, list),
        }
        if not any(ok[t] for t in types):
            return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "maximum" in schema and value > schema["maximum"]:
            return False
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return False
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            return False
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf):
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        if not all(_valid(value[k], s) for k, s in props.items() if k in value):
            return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
            return False
        if not all(_valid(v, schema.get("items", {})) for v in value):
            return False
    return True


RICH_SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"type": "string", "enum": ["message", "react", "no-op"]},
        "ok": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "count": {"type": "integer", "minimum": 0, "maximum": 1000},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "note": {"type": ["string", "null"], "maxLength": 20},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2, "maxItems": 2},
        "inner": {"anyOf": [{"type": "object", "properties": {"x": {"type": "integer"}}}, {"type": "null"}]},
        "fixed": {"const": "v1"},
        "nothing": {"type": "null"},
    },
    "required": ["kind", "ok", "score"],
    "additionalProperties": False,
}


# --------------------------------------------------------------------------- tests


async def test_text_generation_and_usage(backend: HFBackend) -> None:
    r = await backend.generate(_req(max_tokens=12))
    assert isinstance(r.text, str) and r.text.strip()
    assert r.parsed is None
    assert r.model == f"hf/{backend.model}"
    assert r.usage.input_tokens > 10
    assert 0 < r.usage.output_tokens <= 20
    assert r.finish_reason in ("stop", "length")
    assert backend.capabilities.scores_choices and backend.capabilities.seed
    assert not backend.capabilities.structured_output


async def test_max_tokens_and_greedy_is_deterministic(backend: HFBackend) -> None:
    before = backend.stats.generated_tokens
    a = await backend.generate(_req(max_tokens=7))
    assert backend.stats.generated_tokens - before <= 7
    b = await backend.generate(_req(max_tokens=7))
    assert a.text == b.text


async def test_stop_sequence_trims(backend: HFBackend) -> None:
    full = (await backend.generate(_req(max_tokens=24, system="stop test"))).text
    # a stop string whose first character does not occur early (the first token may not be a stop)
    starts = [p for p in range(4, len(full) - 1) if full[p] not in full[:4]]
    if not starts:
        pytest.skip(f"no usable stop string in {full!r}")
    stop = full[starts[0] : starts[0] + 2]
    cut = (await backend.generate(_req(max_tokens=24, system="stop test", stop=(stop,)))).text
    assert stop not in cut
    assert cut == full[: full.find(stop)]


async def test_seed_reproducible_sampling(backend: HFBackend) -> None:
    runs = [await backend.generate(_req(max_tokens=16, temperature=1.0, seed=s)) for s in (1, 1, 2, 3)]
    assert runs[0].text == runs[1].text
    assert len({r.text for r in runs}) >= 2


async def test_choices_always_one_of_them(backend: HFBackend) -> None:
    sets = [("message", "react", "no-op"), ("no", "no-op"), ("a",), ('{"action": "message"', '{"action": "no-op"')]
    for choices in sets:
        for i in range(3):
            r = await backend.generate(_req(choices=choices, system=f"{SYSTEM} {i}"))
            assert r.text in choices
            assert r.parsed is None


def test_choice_scores_match_a_full_forward(backend: HFBackend) -> None:
    """Batched, padded, KV-cached scoring equals brute-force log-probs from one plain forward pass."""
    engine = backend._engine
    assert engine is not None
    prompts = [engine.render(_req(system=s)) for s in ("short", "a much longer system prompt " * 5)]
    plain = [engine.encode(o) for o in ("message", "react now please", "no-op")]
    # options sharing a token prefix: the prefix is run once, then the rest is scored on top of it
    shared = [engine.encode(f'{{"action": "{k}"') for k in ("message", "react", "no-op")]
    assert shared[0][:3] == shared[1][:3]

    def brute(prompt: list[int], opt: list[int]) -> float:
        ids = torch.tensor([prompt + opt])
        with torch.inference_mode():
            lp = engine.model(input_ids=ids).logits.float().log_softmax(-1)[0]
        return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(opt))

    def run(options: list[list[int]]) -> list[list[float]]:
        seqs = [_Seq(p) for p in prompts]
        with torch.inference_mode():
            engine.sync(seqs)
            return engine.score([(s, options) for s in seqs])

    for options in (plain, shared):
        scores = backend_call(backend, lambda options=options: run(options))
        for p, row in zip(prompts, scores, strict=True):
            for opt, got in zip(options, row, strict=True):
                assert got == pytest.approx(brute(p, opt), abs=1e-3)


def test_batched_generation_matches_unbatched(backend: HFBackend) -> None:
    """Left-padded batched greedy decoding produces what each prompt produces alone."""
    engine = backend._engine
    assert engine is not None
    prompts = [engine.render(_req(system=s)) for s in ("one", "two two two two two two two two", "3")]
    op = guided.Generate(max_tokens=10, stop_at_eos=False)

    def run(group: list[list[int]]) -> list[str]:
        seqs = [_Seq(p) for p in group]
        with torch.inference_mode():
            engine.sync(seqs)
            return [t for t, _, _ in engine.generate([(s, op, 0.0, None) for s in seqs])]

    together = backend_call(backend, lambda: run(prompts))
    alone = [backend_call(backend, lambda p=p: run([p]))[0] for p in prompts]
    assert together == alone


def test_repetition_penalty_acts_on_the_recent_window(backend: HFBackend) -> None:
    import dataclasses

    engine = backend._engine
    assert engine is not None
    logits = torch.full((engine.vocab_size,), -5.0)
    logits[40], logits[41] = 2.0, 1.0  # token 40 is the favourite, token 41 the runner-up
    invalid = engine.mask("invalid")
    op = guided.Generate(max_tokens=5)
    item = (_Seq([40, 12]), op, 0.0, None)
    saved = engine.opts
    try:
        engine.opts = dataclasses.replace(saved, repetition_penalty=1.0)
        assert engine._pick(logits, item, [13], "x", invalid) == 40
        engine.opts = dataclasses.replace(saved, repetition_penalty=4.0, repetition_window=64)
        assert engine._pick(logits, item, [13], "x", invalid) == 41  # 40 is in the context window: 2.0 / 4
        engine.opts = dataclasses.replace(saved, repetition_penalty=4.0, repetition_window=1)
        assert engine._pick(logits, item, [13], "x", invalid) == 40  # the window is only the last token
    finally:
        engine.opts = saved


def backend_call(backend: HFBackend, fn: Any) -> Any:
    """Run ``fn`` while the worker is idle (the engine is only touched from one thread at a time)."""
    assert backend._thread is not None and backend._thread.is_alive()
    return fn()


@pytest.mark.parametrize("schema", [ACTION_SCHEMA, RICH_SCHEMA], ids=["action", "rich"])
async def test_schema_objects_are_valid(backend: HFBackend, schema: dict[str, Any]) -> None:
    for i in range(3):
        r = await backend.generate(_req(schema=schema, system=f"{SYSTEM} {i}", max_tokens=40, temperature=0.8, seed=i))
        assert isinstance(r.parsed, dict)
        assert _valid(r.parsed, schema), r.parsed
        assert json.loads(r.text) == r.parsed
        assert list(r.parsed) == list(schema["properties"])


async def test_action_schema_parses_as_action(backend: HFBackend) -> None:
    r = await backend.generate(_req(schema=ACTION_SCHEMA, max_tokens=30))
    assert r.parsed["action"] in ("message", "react", "no-op")
    if r.parsed["action"] == "message":
        assert parse_action(r.parsed).action is not None


def test_guided_programs_without_a_model() -> None:
    node = guided.compile_schema({"type": "string", "maxLength": 5})
    prog = guided.schema_program(node, 10)
    assert next(prog) == guided.Emit('"')
    op = prog.send(None)
    assert isinstance(op, guided.Generate) and op.max_chars == 5
    assert prog.send('he said "hi"\\') == guided.Emit('he sa"')
    with pytest.raises(StopIteration) as stop:
        prog.send(None)
    assert stop.value.value == "he sa"
    # escaping: the value is JSON-escaped when emitted
    prog = guided.schema_program(guided.compile_schema({"type": "string"}), 10)
    next(prog), prog.send(None)
    assert prog.send("a\\b\tc") == guided.Emit('a\\\\b\\tc"')
    # free integers are clamped into range
    prog = guided.schema_program(guided.compile_schema({"type": "integer", "minimum": -3, "maximum": 500}), 10)
    assert isinstance(next(prog), guided.Generate)
    assert prog.send("9999") == guided.Emit("500")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a+$"},
        {"type": "array", "items": {"type": "string"}},
        {"type": ["string", "integer"]},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        {"$ref": "#/$defs/missing"},
        {"type": "object", "properties": {"x": {"type": "string", "format": "email", "minProperties": 1}}},
    ],
)
async def test_unsupported_schema_is_fatal(backend: HFBackend, schema: dict[str, Any]) -> None:
    with pytest.raises(BackendError) as err:
        await backend.generate(_req(schema=schema))
    assert err.value.kind == "fatal"
    assert "local backends support" in str(err.value)


def test_schema_subset_compiles() -> None:
    node = guided.compile_schema(
        {
            "$defs": {"Kind": {"type": "string", "enum": ["x", "y"]}},
            "type": "object",
            "properties": {"k": {"$ref": "#/$defs/Kind"}, "n": {"type": "string", "nullable": True}},
        }
    )
    assert isinstance(node, guided.Obj)
    assert node.props[0][1] == guided.Literal(("x", "y"))
    assert isinstance(node.props[1][1], guided.Nullable)


async def test_concurrent_requests_are_batched_and_loop_stays_free(backend: HFBackend, loop_ticks) -> None:
    before = dict(backend.stats.op_batches)
    requests = [_req(system=f"agent {i}", max_tokens=40, stop=()) for i in range(6)]
    requests += [_req(system=f"agent {i}", schema=ACTION_SCHEMA, max_tokens=30) for i in range(3)]
    requests += [_req(system=f"agent {i}", choices=("message", "react", "no-op")) for i in range(3)]
    async with loop_ticks(0.001) as ticks:
        responses = await asyncio.gather(*(backend.generate(r) for r in requests))
    assert len(responses) == len(requests)
    new = {k: v - before.get(k, 0) for k, v in backend.stats.op_batches.items() if v - before.get(k, 0)}
    assert max(n for (_, n) in new) > 1, new
    assert backend.stats.max_requests_per_op > 1
    assert ticks.count > 20  # the event loop kept running while the worker decoded


async def test_prefix_cache_reuse_is_exact(tiny_dir: Path) -> None:
    cached = HFBackend(str(tiny_dir), device="cpu")
    plain = HFBackend(str(tiny_dir), device="cpu", prefix_cache_mb=0)
    try:
        long_history = tuple(
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i} about the hike"}
            for i in range(9)
        )
        first = _req(messages=long_history, max_tokens=8)
        second = _req(messages=(*long_history, {"role": "assistant", "content": "ok"}, MESSAGES[0]), max_tokens=8)
        await cached.generate(first)
        r1 = await cached.generate(second)
        r2 = await plain.generate(second)
        assert r1.usage.cached_tokens > 50
        assert r2.usage.cached_tokens == 0
        assert r1.text == r2.text
        c1 = await cached.generate(_req(messages=second.messages, choices=("message", "no-op")))
        c2 = await plain.generate(_req(messages=second.messages, choices=("message", "no-op")))
        assert c1.text == c2.text
    finally:
        await cached.aclose()
        await plain.aclose()


async def test_assistant_prefill_is_continued(backend: HFBackend) -> None:
    engine = backend._engine
    assert engine is not None
    prefill = '{"action": "message", "content": "'
    ids = engine.render(_req(messages=(*MESSAGES, {"role": "assistant", "content": prefill})))
    assert engine.decode(ids).endswith(prefill)
    r = await backend.generate(
        _req(messages=(*MESSAGES, {"role": "assistant", "content": prefill}), stop=('"', "\n"), max_tokens=10)
    )
    assert '"' not in r.text and "\n" not in r.text and r.text.strip()


async def test_no_chat_template_falls_back(tmp_path: Path) -> None:
    folder = _build_model(tmp_path / "plain", template=None)
    b = HFBackend(str(folder), device="cpu")
    try:
        r = await b.generate(_req(max_tokens=5))
        assert isinstance(r.text, str)
        c = await b.generate(_req(choices=("yes", "no")))
        assert c.text in ("yes", "no")
        assert b._engine is not None and not b._engine.has_template
    finally:
        await b.aclose()


async def test_lora_adapter_loads_via_peft(tiny_dir: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # LoRA B starts at zero; make the adapter matter
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)

    with_adapter = HFBackend(str(tiny_dir), adapter=str(adapter), device="cpu")
    without = HFBackend(str(tiny_dir), device="cpu")
    try:
        a = await with_adapter.generate(_req(max_tokens=12))
        b = await without.generate(_req(max_tokens=12))
        assert a.text != b.text
        ident = with_adapter.cache_identity()
        assert ident["adapter"] == str(adapter)
        # retrained into the same folder: another identity, so the old cached answers are not served
        with torch.no_grad():
            for name, p in lora.named_parameters():
                if "lora_B" in name:
                    p.add_(0.1)
        lora.save_pretrained(adapter)
        retrained = HFBackend(str(tiny_dir), adapter=str(adapter), device="cpu")
        assert retrained.cache_identity()["adapter_sha256"] != ident["adapter_sha256"]
        assert with_adapter.cache_identity() == ident  # what that backend merged is still the old adapter
        merged = with_adapter._engine.model  # type: ignore[union-attr]
        assert type(merged).__name__ == "LlamaForCausalLM"  # merged, not a PeftModel wrapper
    finally:
        await with_adapter.aclose()
        await without.aclose()


def test_missing_adapter_folder(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SceneSimError, match="adapter"):
        HFBackend(str(tiny_dir), adapter=str(tmp_path / "nope"))


def test_missing_path_and_uncached_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SceneSimError, match=r"never downloads model weights.*local path"):
        HFBackend(str(tmp_path / "no-such-model"))
    with pytest.raises(SceneSimError, match=r"never downloads model weights.*local path"):
        HFBackend("some-org/not-a-cached-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneSimError, match=r"config\.json"):
        HFBackend(str(tmp_path / "empty"))


async def test_unreadable_model_fails_requests_fatally(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    b = HFBackend(str(folder), device="cpu")
    try:
        with pytest.raises(BackendError) as err:
            await b.generate(_req(max_tokens=3))
        assert err.value.kind == "fatal"
        with pytest.raises(SceneSimError):
            b.load()
    finally:
        await b.aclose()


async def test_cancelled_request_does_not_break_the_worker(backend: HFBackend) -> None:
    task = asyncio.create_task(backend.generate(_req(max_tokens=60, system="cancel me")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    r = await backend.generate(_req(choices=("x", "y")))
    assert r.text in ("x", "y")


async def test_aclose_stops_the_worker(tiny_dir: Path) -> None:
    b = HFBackend(str(tiny_dir), device="cpu")
    await b.generate(_req(max_tokens=2))
    thread = b._thread
    assert isinstance(thread, threading.Thread) and thread.is_alive()
    await b.aclose()
    assert not thread.is_alive()
    with pytest.raises(BackendError):
        await b.generate(_req(max_tokens=2))


def test_registry_builds_the_hf_backend(tiny_dir: Path) -> None:
    registry = pytest.importorskip("scene_sim.backends.registry")
    assert registry.backend_class("hf") is HFBackend
    managed = registry.create_backend(f"hf/{tiny_dir}?max_batch=4&length_normalize=true", cache_mode="off")
    inner = managed.backend
    assert isinstance(inner, HFBackend)
    assert inner.opts.max_batch == 4 and inner.opts.length_normalize is True
