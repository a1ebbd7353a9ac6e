"""Benchmark the embedded local model (SmolLM2-135M-Instruct via LocalBackend).

Measures, in one process:

* cold load: an empty model cache (GGUF de-quantisation + writing the cache),
  in a fresh process (the torch/transformers import time is shown apart);
* warm load: a fresh process reading the cache, and a second backend in this
  process (imports already done);
* tokens/s for one request alone, and for 4 concurrent requests
  (``asyncio.gather``) that the worker batches; wall-clock, prefill included,
  counting the tokens the model actually generated;
* peak RSS of the serving process and of the load probes (the cold one
  includes the conversion child), and the ATen CPU capability and the path
  ``pack`` resolved to (set ``ATEN_CPU_CAPABILITY=avx2`` to measure the
  AVX2-only path on an AVX-512 machine);
* the share of valid actions over N agent decisions made the way
  ``scene_sim.studies.scene.agents`` does with a local model (score ``message`` / ``react``
  / ``no-op``, then generate the message content or score the reaction target
  and emoji), run 8 agents at a time; and the same decisions as one guided
  ``schema`` request each (ACTION_SCHEMA), reported as schema-valid share and
  as the share ``parse_action`` accepts (a reaction must also be one emoji,
  which the schema cannot express).

Usage::

    .venv/bin/python benchmarks/local_backend.py            # table
    .venv/bin/python benchmarks/local_backend.py --json     # machine-readable
    .venv/bin/python benchmarks/local_backend.py --cache-dir DIR --pack none
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/local_backend.py   # the AVX2-only path
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scene_sim.actions import ACTION_SCHEMA, parse_action
from scene_sim.backends.base import GenerateRequest

__all__ = ["main"]

NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
TOPICS = [
    ("a weekend hike", ["anyone up for Saturday?", "sure, where?", "the lake trail is nice", "I can drive"]),
    ("a bug report", ["the login page crashes on Safari", "which version?", "16.4, happens every time"]),
    ("a book club", ["did everyone finish chapter 3?", "almost, the ending was wild", "no spoilers please!"]),
    ("office lunch", ["pizza or sushi today?", "sushi!", "pizza is cheaper", "let's vote"]),
    ("a study group", ["exam is on Monday", "can someone share the notes?", "uploaded them to the drive"]),
]
EMOJI = ["👍", "😂", "❤️", "🎉", "🙏"]
KINDS = ["message", "react", "no-op"]


def _scene(i: int) -> tuple[str, list[dict[str, str]], list[int]]:
    """A realistic group-chat prompt: system text, messages and the turn ids that exist."""
    rng = random.Random(i)
    topic, lines = TOPICS[i % len(TOPICS)]
    me = NAMES[i % len(NAMES)]
    others = [n for n in NAMES if n != me]
    turns = []
    for t, line in enumerate(lines, start=1):
        turns.append(f"[t{t}] {rng.choice(others)}: {line}")
    system = (
        f"You are {me}, a member of a small group chat about {topic}. The group has unwritten rules: keep messages "
        "short and friendly, stay on topic, and answer questions that are addressed to you. You can send a "
        "message, react to an earlier message with an emoji, or stay silent (no-op) this time."
    )
    user = "Chat so far:\n" + "\n".join(turns) + f"\n\nIt is your turn, {me}. What do you do?"
    return system, [{"role": "user", "content": user}], list(range(1, len(turns) + 1))


async def _decide(backend: Any, i: int) -> tuple[bool, str]:
    """One decision as ``scene_sim.studies.scene.agents`` makes it with a local model; returns (valid, kind).

    Score the three actions (as the opening of the action object), then either
    generate the message content after a prefilled ``"content": "`` or score
    every (target, emoji) pair for a reaction.
    """
    system, messages, turn_ids = _scene(i)
    msgs = tuple(messages)
    options = tuple(f'{{"action": "{k}"' for k in KINDS)
    chosen = (await backend.generate(GenerateRequest(messages=msgs, system=system, choices=options))).text
    kind = KINDS[options.index(chosen)]
    if kind == "message":
        prefill = '{"action": "message", "content": "'
        convo = (*msgs, {"role": "assistant", "content": prefill})
        r = await backend.generate(
            GenerateRequest(messages=convo, system=system, max_tokens=60, stop=('"', "\n"), temperature=0.7, seed=i)
        )
        data: dict[str, Any] = {"action": "message", "content": r.text, "target_turn_id": None}
    elif kind == "react":
        pairs = list(itertools.product(turn_ids[-3:], EMOJI))
        options = tuple(f'{{"action": "react", "target_turn_id": {t}, "content": "{e}"' for t, e in pairs)
        r = await backend.generate(GenerateRequest(messages=msgs, system=system, choices=options))
        target, emoji = pairs[options.index(r.text)]
        data = {"action": "react", "content": emoji, "target_turn_id": target}
    else:
        data = {"action": "no-op", "content": "", "target_turn_id": None}
    parsed = parse_action(data)
    ok = parsed.action is not None and parsed.error is None
    if ok and kind == "react":
        ok = data["target_turn_id"] in turn_ids
    return ok, kind


def _schema_valid(obj: Any) -> bool:
    """ACTION_SCHEMA validity (object, exact keys, enum, string, integer-or-null)."""
    return (
        isinstance(obj, dict)
        and set(obj) == set(ACTION_SCHEMA["properties"])
        and obj["action"] in KINDS
        and isinstance(obj["content"], str)
        and (
            obj["target_turn_id"] is None
            or (isinstance(obj["target_turn_id"], int) and obj["target_turn_id"] is not True)
        )
    )


async def _decide_schema(backend: Any, i: int) -> tuple[bool, str, bool]:
    """One decision as a single guided-decoding schema request: (action-valid, kind, schema-valid)."""
    system, messages, _ = _scene(i)
    r = await backend.generate(
        GenerateRequest(messages=tuple(messages), system=system, schema=ACTION_SCHEMA, max_tokens=40, seed=i)
    )
    parsed = parse_action(r.parsed)
    return (
        parsed.action is not None and parsed.error is None,
        str((r.parsed or {}).get("action")),
        _schema_valid(r.parsed),
    )


async def _throughput(backend: Any, n_requests: int, max_tokens: int, base: int) -> dict[str, float]:
    """Tokens/s over ``n_requests`` concurrent long answers (distinct prompts: no prefix-cache hits)."""
    reqs = []
    for k in range(n_requests):
        system, messages, _ = _scene(base + k)
        messages = [{"role": "user", "content": messages[0]["content"] + " Write a detailed, friendly reply."}]
        reqs.append(
            GenerateRequest(messages=tuple(messages), system=f"[{base + k}] {system}", max_tokens=max_tokens, seed=k)
        )
    before = backend.stats.generated_tokens
    t0 = time.perf_counter()
    responses = await asyncio.gather(*(backend.generate(r) for r in reqs))
    wall = time.perf_counter() - t0
    tokens = backend.stats.generated_tokens - before
    return {
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "prompt_tokens": statistics.mean(r.usage.input_tokens for r in responses),
    }


def _load_probe(pack: str, threads: int) -> dict[str, float]:
    """Run in a fresh process: time the imports and a LocalBackend load."""
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    imported = time.perf_counter() - t0
    from scene_sim.backends.local import LocalBackend

    backend = LocalBackend("", pack=pack, **({"threads": threads} if threads else {}))
    cached = backend.cache_ready
    t1 = time.perf_counter()
    backend.load()
    loaded = time.perf_counter() - t1
    asyncio.run(backend.aclose())
    return {
        "import_s": imported,
        "load_s": loaded,
        "total_s": imported + loaded,
        "cache_was_ready": cached,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    """Peak RSS (MiB) of this process and, separately counted, of its largest child."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, child) / 1024, 1)


def _probe_in_subprocess(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--load-probe", "--pack", args.pack, "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from scene_sim.backends.local import LocalBackend

    results: dict[str, Any] = {"cpu_count": os.cpu_count(), "pack": args.pack, "threads": args.threads or "all"}
    results["loadavg_start"] = round(os.getloadavg()[0], 2)
    options: dict[str, Any] = {"pack": args.pack}
    if args.threads:
        options["threads"] = args.threads

    cache_root = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="scene-sim-bench-"))
    os.environ["SCENE_SIM_CACHE_DIR"] = str(cache_root)
    try:
        if not args.skip_cold:
            shutil.rmtree(cache_root / "models", ignore_errors=True)
            results["cold"] = _probe_in_subprocess(args)
        results["warm"] = _probe_in_subprocess(args)
        import torch
        import transformers

        results["torch"] = torch.__version__
        results["transformers"] = transformers.__version__
        backend = LocalBackend("", **options)
        results["warm_in_process_s"] = await backend.aload()
        results["pack_kind"] = backend.pack_kind()
        results["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
        try:
            await _throughput(backend, 1, 8, 900)  # warm-up
            single = [await _throughput(backend, 1, args.tokens, 1000 + k) for k in range(args.repeats)]
            batched = [await _throughput(backend, 4, args.tokens, 2000 + 10 * k) for k in range(args.repeats)]
            results["unbatched"] = max(single, key=lambda r: r["tokens_per_s"])
            results["batched_4"] = max(batched, key=lambda r: r["tokens_per_s"])
            for key, runs in (("unbatched", single), ("batched_4", batched)):
                results[f"{key}_all_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in runs]
                results[f"{key}_median_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs)

            for name, fn in (("actions", _decide), ("schema_actions", _decide_schema)):
                t0 = time.perf_counter()
                outcomes: list[tuple[Any, ...]] = []
                for start in range(0, args.actions, args.agents):
                    group = range(start, min(args.actions, start + args.agents))
                    outcomes += await asyncio.gather(*(fn(backend, i) for i in group))
                wall = time.perf_counter() - t0
                kinds: dict[str, int] = {}
                for outcome in outcomes:
                    kinds[outcome[1]] = kinds.get(outcome[1], 0) + 1
                results[name] = {
                    "n": len(outcomes),
                    "valid_share": sum(bool(o[0]) for o in outcomes) / max(1, len(outcomes)),
                    "kinds": kinds,
                    "seconds": wall,
                    "seconds_per_decision": wall / max(1, len(outcomes)),
                }
                if name == "schema_actions":
                    results[name]["schema_valid_share"] = sum(bool(o[2]) for o in outcomes) / max(1, len(outcomes))
            results["stats"] = {
                "max_requests_per_op": backend.stats.max_requests_per_op,
                "cached_prompt_tokens": backend.stats.cached_tokens,
            }
        finally:
            await backend.aclose()
    finally:
        if not args.cache_dir:
            shutil.rmtree(cache_root, ignore_errors=True)
    results["loadavg_end"] = round(os.getloadavg()[0], 2)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def _table(r: dict[str, Any]) -> str:
    rows = [
        (
            "setup",
            f"torch {r['torch']}, transformers {r['transformers']}, {r['cpu_count']} CPUs, pack={r['pack']} "
            f"-> {r['pack_kind']} (ATen {r['cpu_capability']}), "
            f"threads={r['threads']}, load average {r['loadavg_start']} -> {r['loadavg_end']}",
        )
    ]
    for key, label in (("cold", "cold load (empty cache)"), ("warm", "warm load (cached)")):
        if key in r:
            x = r[key]
            rows.append(
                (
                    label,
                    f"{x['load_s']:.1f} s  (fresh process; + {x['import_s']:.1f} s importing torch/transformers; "
                    f"peak RSS {x['peak_rss_mb']:.0f} MiB)",
                )
            )
    rows.append(("warm load, in-process", f"{r['warm_in_process_s']:.2f} s  (imports already done)"))
    rows.append(("peak RSS, serving process", f"{r['peak_rss_mb']:.0f} MiB"))
    for key, label in (("unbatched", "tokens/s, 1 request"), ("batched_4", "tokens/s, 4 concurrent")):
        x = r[key]
        rows.append(
            (
                label,
                f"best {x['tokens_per_s']:.1f}, median {r[key + '_median_tokens_per_s']:.1f}  "
                f"(runs {r[key + '_all_tokens_per_s']}; best: {x['tokens']} tokens in {x['seconds']:.2f} s, "
                f"prompt ~{x['prompt_tokens']:.0f} tokens, prefill included)",
            )
        )
    x = r["actions"]
    rows.append(
        (
            "valid actions (choices+content)",
            f"{100 * x['valid_share']:.0f}% of {x['n']}  {x['kinds']}  ({x['seconds_per_decision']:.2f} s/decision)",
        )
    )
    x = r["schema_actions"]
    rows.append(
        (
            "schema requests (ACTION_SCHEMA)",
            f"{100 * x['schema_valid_share']:.0f}% schema-valid, {100 * x['valid_share']:.0f}% parse as actions  "
            f"{x['kinds']}  ({x['seconds_per_decision']:.2f} s/decision)",
        )
    )
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a.ljust(width)}  {b}" for a, b in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--target", type=float, default=49.0, help="tokens/s with 4 agents to meet (0.5x llama.cpp)")
    parser.add_argument("--actions", type=int, default=50, help="agent decisions for the valid-action share")
    parser.add_argument("--agents", type=int, default=8, help="decisions run concurrently")
    parser.add_argument("--tokens", type=int, default=64, help="max tokens per throughput request")
    parser.add_argument("--repeats", type=int, default=5, help="throughput runs (best and median are reported)")
    parser.add_argument("--pack", default="auto", choices=("auto", "int4", "int8", "none"))
    parser.add_argument("--cache-dir", help="model cache root to use and keep (default: a temporary one)")
    parser.add_argument("--skip-cold", action="store_true", help="do not clear the cache / measure the cold load")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--load-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_probe:
        print(json.dumps(_load_probe(args.pack, args.threads)))
        return 0
    results = asyncio.run(_run(args))
    print(json.dumps(results, indent=2, ensure_ascii=False) if args.json else _table(results))
    # the speed target lives here, not in the tests
    best = results["batched_4"]["tokens_per_s"]
    if args.target and best < args.target:
        print(f"below target: {best:.1f} tokens/s with 4 agents < {args.target:.1f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
