"""The response cache: keys, modes, zero-call hits, concurrency across processes."""

from __future__ import annotations

import asyncio
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


async def test_unparsed_schema_answers_are_not_cached(kit: Kit, server: FakeServer) -> None:
    """A re-query after a parse failure must reach the model again, not replay the bad answer."""
    server.queue(kit.text("no json here"), kit.structured({"x": 1}))
    backend = create_backend(kit.model(server))
    bad = await backend.generate(req(schema=SCHEMA))
    good = await backend.generate(req(schema=SCHEMA))
    await backend.aclose()
    assert bad.parsed is None and good.parsed == {"x": 1}
    assert len(server.posts) == 2


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
