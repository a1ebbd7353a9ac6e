"""The response cache: keys, modes, zero-call hits, concurrency across processes."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Kit
from fakeserver import FakeServer

from scene_sim.backends import GenerateRequest, ResponseCache, cache_key, create_backend, default_cache_dir
from scene_sim.errors import SceneSimError

IDENTITY = {"provider": "openai", "model": "gpt-test", "base_url": None}
SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}


def req(**kw) -> GenerateRequest:
    kw.setdefault("messages", ({"role": "user", "content": "hello"},))
    kw.setdefault("system", "sys")
    return GenerateRequest(**kw)


def rows(directory: Path) -> int:
    path = directory / "responses.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


# -- the key ------------------------------------------------------------------------


def test_key_is_stable_and_hex() -> None:
    key = cache_key(IDENTITY, req())
    assert key == cache_key(dict(IDENTITY), req()) and len(key) == 64
    int(key, 16)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"replicate": 1},
        {"temperature": 0.3},
        {"max_tokens": 100},
        {"stop": ("END",)},
        {"system": "other"},
        {"messages": ({"role": "user", "content": "hello!"},)},
        {"schema": SCHEMA},
        {"choices": ("a", "b")},
    ],
)
def test_key_changes_with_what_changes_the_answer(change: dict) -> None:
    assert cache_key(IDENTITY, req(**change)) != cache_key(IDENTITY, req())


def test_every_field_of_the_key_changes_it() -> None:
    """Pin the key recipe: provider, model, base URL, prompt, schema, schema_name, sampling, seed, replicate."""
    base_req = req(schema=SCHEMA, schema_name="answer", temperature=0.5, max_tokens=50, seed=3, replicate=0)
    base = cache_key(IDENTITY, base_req)
    identity_changes = [{"provider": "anthropic"}, {"model": "gpt-other"}, {"base_url": "http://127.0.0.1:9/v1"}]
    for change in identity_changes:
        assert cache_key({**IDENTITY, **change}, base_req) != base, change
    request_changes = [
        {"system": "another system"},
        {"messages": ({"role": "user", "content": "hello?"},)},
        {"messages": ({"role": "assistant", "content": "hello"},)},
        {"schema": {**SCHEMA, "required": []}},
        {"schema_name": "other_name"},
        {"temperature": 0.7},
        {"max_tokens": 51},
        {"stop": ("END",)},
        {"seed": 4},
        {"replicate": 1},
        {"schema": None, "choices": ("a", "b")},
    ]
    for change in request_changes:
        assert cache_key(IDENTITY, dataclasses.replace(base_req, **change)) != base, change


def test_key_ignores_role() -> None:
    assert cache_key(IDENTITY, req(role="judge")) == cache_key(IDENTITY, req(role="persona"))


@pytest.mark.parametrize("field", ["provider", "model", "base_url"])
def test_key_changes_with_backend_identity(field: str) -> None:
    other = {**IDENTITY, field: "something-else"}
    assert cache_key(other, req()) != cache_key(IDENTITY, req())


def test_key_ignores_limits_and_retries() -> None:
    a = create_backend("fake/m", cache_mode="off", rpm=10, max_connections=2, max_attempts=2, timeout_s=3)
    b = create_backend("fake/m?latency_ms=5", cache_mode="off")
    assert a.cache_key(req()) == b.cache_key(req())


# -- modes --------------------------------------------------------------------------


def test_default_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("SCENE_SIM_CACHE_DIR")
    assert "scene-sim" in str(default_cache_dir())


def test_unknown_mode_is_a_user_error() -> None:
    with pytest.raises(SceneSimError, match="read-write, read-only, off"):
        ResponseCache("readwrite")


async def test_hit_makes_zero_http_calls(kit: Kit, server: FakeServer) -> None:
    server.queue(kit.structured({"x": 3}, input_tokens=50, output_tokens=4))
    backend = create_backend(kit.model(server))
    first = await backend.generate(req(schema=SCHEMA, seed=1))
    second = await backend.generate(req(schema=SCHEMA, seed=1, role="judge"))
    await backend.aclose()
    assert len(server.posts) == 1
    assert not first.cache_hit and second.cache_hit
    assert second.attempts == 0
    assert (second.text, second.parsed, second.usage, second.model) == (
        first.text,
        first.parsed,
        first.usage,
        first.model,
    )
    assert backend.accountant.summary()["total"]["cache_hits"] == 1


async def test_seed_and_replicate_miss_the_cache() -> None:
    backend = create_backend("fake/m")
    for kw in ({}, {"seed": 2}, {"replicate": 1}, {"replicate": 1}):
        await backend.generate(req(**kw))
    total = backend.accountant.summary()["total"]
    await backend.aclose()
    assert total["calls"] == 4 and total["cache_hits"] == 1


async def test_read_only_reads_but_never_writes(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    ro = create_backend("fake/m", cache_mode="read-only")
    await ro.generate(req())
    assert not (directory / "responses.sqlite3").exists()  # read-only never creates the database
    rw = create_backend("fake/m")
    await rw.generate(req())
    assert rows(directory) == 1
    hit = await ro.generate(req())
    assert hit.cache_hit
    miss = await ro.generate(req(seed=9))
    assert not miss.cache_hit
    assert rows(directory) == 1
    await ro.aclose()
    await rw.aclose()


async def test_off_neither_reads_nor_writes(tmp_path: Path) -> None:
    rw = create_backend("fake/m")
    await rw.generate(req())
    off = create_backend("fake/m", cache_mode="off")
    again = await off.generate(req())
    new = await off.generate(req(seed=5))
    assert not again.cache_hit and not new.cache_hit
    assert rows(tmp_path / "cache") == 1
    await rw.aclose()
    await off.aclose()


async def test_unparsed_schema_answers_are_stored_and_replayed(kit: Kit, server: FakeServer) -> None:
    """A bad answer is what the provider returned: it is replayed; the re-query is its own entry."""
    server.queue(kit.text("no json here"), kit.structured({"x": 1}))
    backend = create_backend(kit.model(server))
    first = req(schema=SCHEMA)
    requery = req(
        schema=SCHEMA,
        messages=(
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "no json here"},
            {"role": "user", "content": "That was not valid. Reply with the JSON object only."},
        ),
    )
    bad = await backend.generate(first)
    good = await backend.generate(requery)
    server.default = kit.error(500, "the replay must not reach the provider")
    bad_again = await backend.generate(first)
    good_again = await backend.generate(requery)
    await backend.aclose()
    assert bad.parsed is None and good.parsed == {"x": 1}
    assert (bad_again.cache_hit, bad_again.text, bad_again.parsed) == (True, bad.text, None)
    assert (good_again.cache_hit, good_again.parsed) == (True, {"x": 1})
    assert len(server.posts) == 2


async def test_empty_answers_are_stored(kit: Kit, server: FakeServer) -> None:
    server.queue(kit.text(""))
    backend = create_backend(kit.model(server))
    await backend.generate(req())
    again = await backend.generate(req())
    await backend.aclose()
    assert again.cache_hit and again.text == "" and len(server.posts) == 1


async def test_transport_retries_store_the_answer_the_caller_got(kit: Kit, server: FakeServer) -> None:
    """Attempts that fail in transport leave nothing; the stored output is the attempt that answered."""
    server.queue(kit.error(429, "slow down"), kit.error(500, "oops"), kit.text("{not json"), kit.text("later"))
    backend = create_backend(kit.model(server, max_attempts=4))
    backend.backoff_base_s = 0.001
    got = await backend.generate(req(schema=SCHEMA))
    again = await backend.generate(req(schema=SCHEMA))
    await backend.aclose()
    assert got.attempts == 3 and got.parsed is None and got.text == "{not json"
    assert again.cache_hit and again.text == "{not json" and len(server.posts) == 3
    assert rows(default_cache_dir()) == 1


async def test_failed_entry_refreshed_by_read_write_replayed_by_read_only(kit: Kit, server: FakeServer) -> None:
    """An answer that fails the call (no choice matched) is a failed entry."""
    from scene_sim.backends._managed import CallFailed

    choose = req(choices=("yes", "no"))
    server.queue(kit.structured({"choice": "banana"}), kit.structured({"choice": "banana"}))
    rw = create_backend(kit.model(server, max_attempts=2))
    rw.backoff_base_s = 0.001
    with pytest.raises(CallFailed, match="banana") as first:
        await rw.generate(choose)
    assert len(server.posts) == 2

    ro = create_backend(kit.model(server, max_attempts=2), cache_mode="read-only")
    with pytest.raises(CallFailed) as replayed:
        await ro.generate(choose)
    assert len(server.posts) == 2  # read-only replays the failure without a request
    assert str(replayed.value) == str(first.value) and replayed.value.cache_hit and replayed.value.attempts == 0

    server.queue(kit.structured({"choice": "no"}))
    refreshed = await rw.generate(choose)  # read-write asks again and overwrites the failed entry
    assert refreshed.text == "no" and not refreshed.cache_hit and len(server.posts) == 3
    assert (await ro.generate(choose)).text == "no" and len(server.posts) == 3
    await rw.aclose()
    await ro.aclose()


async def test_concurrent_writers_in_one_loop(tmp_path: Path) -> None:
    backend = create_backend("fake/m?latency_ms=1")
    await asyncio.gather(*(backend.generate(req(seed=i)) for i in range(200)))
    hits = await asyncio.gather(*(backend.generate(req(seed=i)) for i in range(200)))
    await backend.aclose()
    assert all(h.cache_hit for h in hits)
    assert rows(tmp_path / "cache") == 200


def test_concurrent_writers_across_processes(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from scene_sim.backends import GenerateRequest, create_backend

        async def main(worker):
            backend = create_backend("fake/m")
            for i in range(60):
                # half the keys are shared by every worker, half are the worker's own
                seed = i if i % 2 else 1000 * (worker + 1) + i
                await backend.generate(GenerateRequest(messages=({"role": "user", "content": "hi"},), seed=seed))
            await backend.aclose()

        asyncio.run(main(int(sys.argv[1])))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)]) for w in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert rows(tmp_path / "cache") == 30 + 4 * 30
