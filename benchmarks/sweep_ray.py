"""Episodes/s of ``sweep --executor ray`` with 1 and 2 workers on CPU-bound scripted episodes.

The offline policies play every role (no model, no network), so an episode
is pure CPU: simulation, the oracle judge, the audit. One local Ray cluster
(``--cpus``, loopback only) serves every run; each run starts its own
workers. Two figures per run: ``wall_eps`` (planned episodes over the whole
sweep, the workers' start included) and ``steady_eps`` (episodes over the
time between the first and the last episode file written, i.e. once the
workers are up). The target is ``steady_eps`` with 2 workers at least 1.7x
that with 1 on a 2-core machine. The driver, which only stores what the
workers return, runs beside them on the same cores.

    python benchmarks/sweep_ray.py --reps 6 --workers 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from scene_sim.rundir import RunDir
from scene_sim.studies.scene.spec import SweepSpec
from scene_sim.studies.scene.sweep import run_sweep

SUBJECTS = [
    "scripted/learner",
    "scripted/always-message",
    "scripted/always-react",
    "scripted/silent",
    "scripted/random",
]


def _spec(reps: int, concurrency: int) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": "ray_bench",
            "subjects": SUBJECTS,
            "run": {"reps": reps, "max_turns": 8, "concurrency": concurrency, "cache": "off"},
        }
    )


def _steady_eps(out: Path) -> float:
    run = RunDir(out)
    times = sorted(os.stat(run.label_path(eid)).st_mtime for eid in run.labelled_ids())
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")


async def one_run(spec: SweepSpec, workers: int | None, executor: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"scene-sim-ray-{executor}-{workers}-"))
    t0 = time.perf_counter()
    summary = await run_sweep(spec, out, quiet=True, analyze=False, executor=executor, workers=workers)
    wall = time.perf_counter() - t0
    assert summary.simulated == summary.planned and summary.errors == 0, summary
    return {
        "executor": executor,
        "workers": workers,
        "episodes": summary.simulated,
        "wall_s": round(wall, 2),
        "wall_eps": round(summary.simulated / wall, 1),
        "steady_eps": round(_steady_eps(out), 1),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # other processes on the cores skew the figures
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=6, help="repetitions of 5 subjects x 34 bank scenarios")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster")
    ap.add_argument("--concurrency", type=int, default=64, help="episodes in flight per worker")
    ap.add_argument("--local", action="store_true", help="also time --executor local (one event loop)")
    a = ap.parse_args()
    import ray

    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        spec = _spec(a.reps, a.concurrency)
        rows = [asyncio.run(one_run(spec, None, "local"))] if a.local else []
        rows += [asyncio.run(one_run(spec, n, "ray")) for n in a.workers]
    finally:
        ray.shutdown()
    by_workers = {r["workers"]: r for r in rows if r["executor"] == "ray"}
    result: dict = {"runs": rows}
    if 1 in by_workers and 2 in by_workers:
        result["speedup_1_to_2"] = {
            key: round(by_workers[2][key] / by_workers[1][key], 2) for key in ("steady_eps", "wall_eps")
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
