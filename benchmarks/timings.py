"""Speed targets that used to be timed assertions in the test suite.

Tests assert behaviour only; the wall-clock targets live here, where a slow
or busy machine gives a number instead of a flaky failure:

* ``bootstrap``: Spearman's rho with a 2000-resample bootstrap CI over
  100,000 episodes (target: under 3 s);
* ``fake_concurrency``: 300 calls to ``fake/bench?latency_ms=100`` at once
  through the managed layer (target: under 1.5 s; the loop never blocks);
* ``timeout_retry``: an OpenAI-compatible loopback server that stalls 3 s on
  the first request, with a 0.4 s per-attempt timeout (target: the retried
  answer within 2.5 s).

    python benchmarks/timings.py            # all, as JSON, with pass/fail per target
    python benchmarks/timings.py bootstrap
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS_S = {"bootstrap": 3.0, "fake_concurrency": 1.5, "timeout_retry": 2.5}


def bootstrap() -> float:
    import numpy as np

    from scene_sim.studies.scene.stats import spearman_bootstrap

    rng = np.random.default_rng(1)
    n = 100_000
    x = rng.integers(0, 25, n)
    later = rng.integers(1, 9, n)
    y = rng.binomial(later, 0.4) / later
    start = time.perf_counter()
    res = spearman_bootstrap(x, y, n_boot=2000, seed=0)
    elapsed = time.perf_counter() - start
    assert res.n == n and res.ci is not None
    return elapsed


async def _fake_concurrency() -> float:
    from scene_sim.backends import create_backend
    from scene_sim.backends.base import GenerateRequest

    backend = create_backend("fake/bench?latency_ms=100", cache_mode="off")
    start = time.monotonic()
    await asyncio.gather(
        *(backend.generate(GenerateRequest(messages=({"role": "user", "content": "hi"},), seed=i)) for i in range(300))
    )
    elapsed = time.monotonic() - start
    await backend.aclose()
    return elapsed


async def _timeout_retry() -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends"))
    from fakeserver import FakeServer, Reply

    from scene_sim.backends import create_backend
    from scene_sim.backends.base import GenerateRequest

    os.environ.setdefault("OPENAI_API_KEY", "sk-benchmark-not-a-key")
    server = FakeServer()
    ok = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "in time"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    server.queue(Reply(200, {}, delay_s=3.0), Reply(200, ok))
    try:
        backend = create_backend(f"openai/m?base_url={server.url}/v1", cache_mode="off", timeout_s=0.4)
        backend.backoff_base_s = 0.01  # as in the test: short jittered backoff
        start = time.monotonic()
        resp = await backend.generate(GenerateRequest(messages=({"role": "user", "content": "hi"},)))
        elapsed = time.monotonic() - start
        await backend.aclose()
        assert resp.text == "in time", resp
    finally:
        server.close()
    return elapsed


def run(name: str) -> dict[str, Any]:
    os.environ.setdefault("SCENE_SIM_CACHE_DIR", tempfile.mkdtemp(prefix="scene-sim-bench-cache-"))
    if name == "bootstrap":
        elapsed = bootstrap()
    elif name == "fake_concurrency":
        elapsed = asyncio.run(_fake_concurrency())
    else:
        elapsed = asyncio.run(_timeout_retry())
    target = TARGETS_S[name]
    return {"benchmark": name, "seconds": round(elapsed, 3), "target_s": target, "ok": elapsed < target}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", choices=[*TARGETS_S, []], help="benchmarks to run (default: all)")
    args = ap.parse_args()
    results = [run(n) for n in (args.names or list(TARGETS_S))]
    print(json.dumps(results, indent=2))
    sys.exit(0 if all(r["ok"] for r in results) else 1)
