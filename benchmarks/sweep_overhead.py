"""Framework overhead of a sweep.

A simulated model with a fixed 100 ms latency behind a 64-connection limit
serves every role; with enough episodes in flight the ideal throughput is
64 / 0.1 = 640 calls/s. The figure of merit is achieved calls/s over the
whole run (ramp-up and the last episodes included) divided by that ideal
(target >= 0.95). 512 episodes are in flight (8 x the connections), so every
connection has a call waiting until the plan runs out.

    python benchmarks/sweep_overhead.py --episodes 2000
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

sys.path.insert(0, str(Path(__file__).parent))
from _sim import SimModel

from scene_sim.context import RunContext
from scene_sim.events import iter_event_dicts
from scene_sim.rundir import RunDir
from scene_sim.studies.scene.spec import SweepSpec
from scene_sim.studies.scene.sweep import run_sweep


async def main(episodes: int, connections: int, latency: float, concurrency: int, persona_calls: str) -> dict:
    reps = max(1, round(episodes / 34))
    spec = SweepSpec.model_validate(
        {
            "name": "overhead",
            "subjects": ["custom/sim"],
            "personas": "custom/sim",
            "orchestrator": "custom/sim",
            "judge": None,
            "run": {
                "reps": reps,
                "max_turns": 8,
                "concurrency": concurrency,
                "cache": "off",
                "persona_calls": persona_calls,
            },
        }
    )
    ctx = RunContext(cache_mode="off")
    sim = SimModel(latency_s=latency)
    ctx.add("custom/sim", sim, max_connections=connections)
    out = Path(tempfile.mkdtemp(prefix="scene-sim-overhead-"))
    t0 = time.perf_counter()
    summary = await run_sweep(spec, out, quiet=True, analyze=False, context=ctx)
    wall = time.perf_counter() - t0
    await ctx.aclose()
    run = RunDir(out)
    calls = sum(
        1 for eid in run.episode_ids() for e in iter_event_dicts(run.episode_path(eid)) if e["kind"] == "model_call"
    )
    ideal = connections / latency
    return {
        "episodes": summary.simulated,
        "calls": calls,
        "wall_s": round(wall, 2),
        "calls_per_s": round(calls / wall, 1),
        "ideal_calls_per_s": ideal,
        "efficiency": round(calls / wall / ideal, 3),
        **_account(sim.windows, t0, t0 + wall, connections, latency),
        # on a shared machine other processes delay the loop's timers: the figure holds only at low load
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "run_dir": str(out),
    }


def _account(windows: list[tuple[float, float]], t0: float, t1: float, connections: int, latency: float) -> dict:
    """Where the connection-seconds went: start-up, ramp-up, the busy middle and the tail.

    The connections are "full" while ``connections`` calls are in flight. Before
    the first full moment is start-up and ramp-up (the first episodes being
    built), after the last one is the tail (the last episodes finishing one
    call at a time); in between, a shortfall is the loop's own overhead.
    """
    edges = sorted([(s, 1) for s, _ in windows] + [(e, -1) for _, e in windows])
    busy, first_full, last_full, busy_area, prev = 0, None, None, 0.0, t0
    for at, step in edges:
        busy_area += busy * (at - prev)
        prev = at
        busy += step
        if busy >= connections:
            first_full = at if first_full is None else first_full
            last_full = at
    first_full = first_full if first_full is not None else t0
    last_full = last_full if last_full is not None else t1
    middle = [(s, e) for s, e in windows if s >= first_full and e <= last_full]
    mid_s = max(1e-9, last_full - first_full)
    return {
        "first_call_s": round(min(s for s, _ in windows) - t0, 2) if windows else None,
        "ramp_up_s": round(first_full - t0, 2),
        "tail_s": round(t1 - last_full, 2),
        "middle_efficiency": round(len(middle) * latency / (connections * mid_s), 3),
        "connection_busy_share": round(busy_area / (connections * (t1 - t0)), 3),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=512, help="episodes in flight (8 x the connections)")
    ap.add_argument("--persona-calls", default="each", choices=("each", "joint"))
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.episodes, a.connections, a.latency, a.concurrency, a.persona_calls)), indent=2))
