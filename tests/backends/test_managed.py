"""The managed wrapper: limits, throttles, output normalisation, secrecy of keys."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from pathlib import Path

import pytest
from conftest import KITS, SECRET, Kit
from fakeserver import FakeServer, Reply

from scene_sim.backends import (
    CallFailed,
    GenerateRequest,
    ManagedBackend,
    choice_schema,
    create_backend,
    decode_json,
    match_choice,
    model_call_fields,
)
from scene_sim.backends._managed import _FairSlots
from scene_sim.backends.base import Backend, GenerateResponse, parse_retry_after, redact
from scene_sim.backends.fake import FakeBackend


def req(**kw) -> GenerateRequest:
    kw.setdefault("messages", ({"role": "user", "content": "hello"},))
    return GenerateRequest(**kw)


# -- connection limit -----------------------------------------------------------------


async def test_connection_limit_is_honoured(kit: Kit, server: FakeServer) -> None:
    server.default = Reply(**{**kit.text("slow").__dict__, "delay_s": 0.15})
    backend = create_backend(kit.model(server), cache_mode="off", max_connections=2)
    results = await asyncio.gather(*(backend.generate(req(seed=i)) for i in range(6)))
    await backend.aclose()
    assert all(r.text == "slow" for r in results)
    assert server.max_in_flight == 2


async def test_connection_limit_is_shared_per_provider_and_base_url(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = KITS["openai"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.default = Reply(**{**kit.text("slow").__dict__, "delay_s": 0.15})
    base = f"{server.url}/v1"
    a = create_backend(f"openai/model-a?base_url={base}", cache_mode="off", max_connections=3)
    b = create_backend(f"openai/model-b?base_url={base}", cache_mode="off", max_connections=3)
    await asyncio.gather(*(m.generate(req(seed=i)) for i in range(5) for m in (a, b)))
    await a.aclose()
    await b.aclose()
    assert server.max_in_flight == 3
    assert {r.json["model"] for r in server.posts} == {"model-a", "model-b"}


async def test_fake_backend_runs_many_calls_concurrently() -> None:
    # all 300 calls are in flight at once (its speed target is benchmarks/timings.py fake_concurrency)
    backend = create_backend("fake/bench?latency_ms=100", cache_mode="off")
    inner = backend.backend.generate
    state = {"now": 0, "peak": 0}

    async def counted(request):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        try:
            return await inner(request)
        finally:
            state["now"] -= 1

    backend.backend.generate = counted
    await asyncio.gather(*(backend.generate(req(seed=i)) for i in range(300)))
    assert state["peak"] == 300


class _Gate(Backend):
    """Answers when its gate opens; records the name of the task of each call, in service order."""

    provider = "gate"

    def __init__(self) -> None:
        super().__init__("m")
        self.gate = asyncio.Event()
        self.order: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        self.order.append(asyncio.current_task().get_name())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return GenerateResponse("ok")


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_freed_connection_goes_to_the_waiting_task_with_fewest_calls() -> None:
    gate = _Gate()
    backend = ManagedBackend(gate, max_connections=1, timeout_s=5)
    gate.gate.set()
    warmed, again = asyncio.Event(), asyncio.Event()

    async def veteran() -> None:
        for i in range(3):
            await backend.generate(req(seed=i))
        warmed.set()
        await again.wait()
        await backend.generate(req(seed=3))

    vet = asyncio.create_task(veteran(), name="veteran")
    await warmed.wait()
    gate.gate.clear()
    holder = asyncio.create_task(backend.generate(req(seed=4)), name="holder")
    await _settle()
    assert gate.in_flight == 1
    again.set()
    await _settle()  # the veteran queues first ...
    newcomer = asyncio.create_task(backend.generate(req(seed=5)), name="newcomer")
    await _settle()  # ... the newcomer second, but has made no call yet
    gate.gate.set()
    await asyncio.wait_for(asyncio.gather(vet, holder, newcomer), 5)
    assert gate.order[3:] == ["holder", "newcomer", "veteran"]
    assert gate.max_in_flight == 1


async def test_a_cancelled_waiter_does_not_lose_the_connection() -> None:
    slots = _FairSlots(1)
    await slots.__aenter__()

    async def wait_for_slot() -> None:
        async with slots:
            await asyncio.sleep(10)

    queued = asyncio.create_task(wait_for_slot())
    await _settle()
    await slots.__aexit__()  # handed to the queued task ...
    queued.cancel()  # ... which is cancelled before it runs: it must pass the slot on
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.wait_for(slots.__aenter__(), 1)
    waiting = asyncio.create_task(slots.__aenter__())
    await _settle()
    waiting.cancel()  # cancelled while still waiting: nothing handed over, nothing lost
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await slots.__aexit__()
    await asyncio.wait_for(slots.__aenter__(), 1)


# -- throttles ------------------------------------------------------------------------


async def test_rpm_throttle_holds_back_requests() -> None:
    backend = create_backend("fake/m", cache_mode="off", rpm=2)
    tasks = [asyncio.create_task(backend.generate(req(seed=i))) for i in range(3)]
    await asyncio.sleep(0.4)
    done = [t for t in tasks if t.done()]
    assert len(done) == 2  # the third waits for the minute window
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert backend.accountant.summary()["total"]["calls"] == 2


async def test_tpm_limit_holds_back_requests() -> None:
    backend = create_backend("fake/m", cache_mode="off", tpm=250)
    prompt = "x" * 400  # ~100 tokens, plus max_tokens=10 reserved
    tasks = [
        asyncio.create_task(
            backend.generate(req(messages=({"role": "user", "content": prompt},), seed=i, max_tokens=10))
        )
        for i in range(3)
    ]
    await asyncio.sleep(0.4)
    assert sum(t.done() for t in tasks) == 2
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_limits_work_in_a_fresh_event_loop() -> None:
    """Shared semaphores are per event loop: a backend reused from another loop must not break."""
    backend = create_backend("fake/m", cache_mode="off", max_connections=1)
    await backend.generate(req())

    def other_loop() -> str:
        return asyncio.run(backend.generate(req(seed=1))).text

    assert await asyncio.to_thread(other_loop) == "ok"


# -- choices and parsing ------------------------------------------------------------


def test_choice_schema_shape() -> None:
    assert choice_schema(("a", "b")) == {
        "type": "object",
        "properties": {"choice": {"type": "string", "enum": ["a", "b"]}},
        "required": ["choice"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("react", "react"),
        ({"choice": "no-op"}, "no-op"),
        ("React", "react"),
        ("  MESSAGE. ", "message"),
        ('"no-op"', "no-op"),
        ("no-op because nobody asked", "no-op"),
        ("mess", "message"),
        ("dance", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_match_choice(answer: object, expected: str | None) -> None:
    assert match_choice(answer, ("message", "react", "no-op")) == expected


def test_match_choice_ambiguous_prefix_is_none() -> None:
    assert match_choice("re", ("react", "reply")) is None
    assert match_choice("no", ("no", "no-op")) == "no"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('Here you go: {"a": 1} hope it helps', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ("not json", None),
        ("", None),
        ('{"a": 1', None),
    ],
)
def test_decode_json(text: str, expected: object) -> None:
    assert decode_json(text) == expected


def test_decode_json_wants_an_object_for_object_schemas() -> None:
    assert decode_json("[1, 2]", {"type": "object"}) is None
    assert decode_json('"x" then {"k": 2}', {"type": "object"}) == {"k": 2}


async def test_choices_with_fake_backend() -> None:
    backend = create_backend("fake/m", cache_mode="off")
    resp = await backend.generate(req(choices=("stay", "go")))
    assert resp.text == "stay" and resp.parsed is None


async def test_choices_outside_the_set_exhaust_attempts(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = KITS["openai"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.default = kit.text('{"choice": "dance"}')
    backend = create_backend(kit.model(server), cache_mode="off", max_attempts=3)
    backend.backoff_base_s = 0.01
    with pytest.raises(CallFailed, match="matches none of the choices"):
        await backend.generate(req(choices=("stay", "go")))
    assert len(server.posts) == 3


# -- retry-after parsing ---------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None


# -- secrets ---------------------------------------------------------------------------


def test_redact(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SECRET not in redact(f"key={SECRET}")
    assert redact("nothing secret") == "nothing secret"
    monkeypatch.setenv("GEMINI_API_KEY", "plain-looking-value-77")  # not shaped like a key: caught by value
    assert redact("got plain-looking-value-77 back") == "got [REDACTED] back"


async def test_keys_never_leak(kit: Kit, server: FakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The key reaches the provider and nowhere else: not the cache, errors, retry records, logs or reports."""
    caplog.set_level(logging.DEBUG)
    server.queue(
        kit.error(429, f"rate limited for key {SECRET}", {"retry-after": "0"}),
        kit.structured({"x": 1}),
        kit.text("plain"),
        kit.error(500, f"server echoed {SECRET}"),
        kit.error(401, f"Incorrect API key provided: {SECRET}"),
    )
    backend = create_backend(kit.model(server), max_attempts=3)
    backend.backoff_base_s = 0.01
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    ok = await backend.generate(req(schema=schema))
    plain = await backend.generate(req(seed=3))
    with pytest.raises(CallFailed) as info:
        await backend.generate(req(seed=4))
    await backend.aclose()

    sent = server.posts[0]
    assert SECRET in json.dumps(sent.headers)  # the provider did get the key

    err = info.value
    texts = [
        str(err),
        repr(err),
        "".join(traceback.format_exception(err)),
        json.dumps(ok.retries),
        json.dumps(err.retries),
        repr(ok),
        repr(plain),
        json.dumps(backend.accountant.summary()),
        caplog.text,
        repr(backend),
        repr(backend.backend.__dict__),
    ]
    for text in texts:
        assert SECRET not in text
    assert "REDACTED" in str(err)  # the provider's echo of the key was scrubbed, the message kept
    for path in (tmp_path / "cache").iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name


async def test_managed_wrapper_around_a_backend_instance() -> None:
    """ManagedBackend also wraps a Backend built by hand (no registry)."""
    managed = ManagedBackend(FakeBackend("direct", reply="hi"), max_connections=1)
    resp = await managed.generate(req())
    assert resp.text == "hi" and resp.model == "fake/direct" and managed.model_string == "fake/direct"
    assert managed.capabilities.structured_output
    await managed.aclose()


async def test_model_call_fields(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = KITS["openai"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.queue(kit.text("hi", input_tokens=12, output_tokens=3, cached=4), kit.error(404, f"no such model {SECRET}"))
    backend = create_backend(kit.model(server), cache_mode="off")
    ok = model_call_fields(await backend.generate(req()))
    with pytest.raises(CallFailed) as info:
        await backend.generate(req(seed=1))
    await backend.aclose()
    assert set(ok) == {
        "model",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "latency_s",
        "attempts",
        "cache_hit",
        "error",
    }
    assert ok["model"] == "openai/gpt-test" and (ok["input_tokens"], ok["cached_tokens"], ok["error"]) == (12, 4, None)
    failed = model_call_fields(info.value)
    assert failed["attempts"] == 1 and failed["model"] == "openai/gpt-test" and not failed["cache_hit"]
    assert "no such model" in failed["error"] and SECRET not in failed["error"]
    json.dumps(failed)


async def test_openai_drops_temperature_when_rejected(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = KITS["openai"]
    monkeypatch.setenv(kit.key_env, SECRET)
    server.queue(
        kit.error(400, "Unsupported value: 'temperature' does not support 0.2 with this model."), kit.text("ok")
    )
    backend = create_backend(kit.model(server), cache_mode="off")
    backend.backoff_base_s = 0.01
    resp = await backend.generate(req(temperature=0.2))
    await backend.aclose()
    assert resp.attempts == 2
    assert server.posts[0].json["temperature"] == 0.2 and "temperature" not in server.posts[1].json


# -- retry-after cap -------------------------------------------------------------------


class _RetryAfter(Backend):
    """Fails once with a retryable error asking for a long wait, then answers."""

    provider = "retry-after"

    def __init__(self, retry_after: float) -> None:
        super().__init__("m")
        self.retry_after = retry_after
        self.calls = 0

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        from scene_sim.backends.base import BackendError

        self.calls += 1
        if self.calls == 1:
            raise BackendError("rate limited", kind="retry", status=429, retry_after=self.retry_after)
        return GenerateResponse(text="ok")


async def test_retry_after_is_capped_at_max_wait_s() -> None:
    backend = ManagedBackend(_RetryAfter(retry_after=3600.0), max_wait_s=0.05, backoff_base_s=1e-6)
    resp = await backend.generate(req())
    assert resp.text == "ok" and resp.attempts == 2
    # the provider asked for an hour: the wait is the cap, not the hour (nor the tiny jittered backoff)
    assert resp.retries[0]["wait_s"] == 0.05 and resp.retries[0]["status"] == 429


async def test_retry_after_below_the_cap_is_honoured() -> None:
    backend = ManagedBackend(_RetryAfter(retry_after=0.02), max_wait_s=0.05, backoff_base_s=1e-6)
    resp = await backend.generate(req())
    assert resp.retries[0]["wait_s"] == 0.02
