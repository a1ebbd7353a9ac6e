"""Wall time and peak memory of large offline sweeps.

Runs the scripted subjects over the scenario bank (scripted personas,
orchestrator and oracle judge, statistics and report at the end) for several
sweep sizes, each in a fresh process, and reports wall time and peak RSS.
Memory must stay flat in the number of episodes (target < 1 GiB at 10,000).

    python benchmarks/sweep_scale.py --sizes 1000 5000 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBJECTS = [
    "scripted/learner",
    "scripted/always-message",
    "scripted/always-react",
    "scripted/silent",
    "scripted/random",
]


def inner(episodes: int, out: str) -> dict:
    from scene_sim.studies.scene._catalog import scenario_source
    from scene_sim.studies.scene.spec import SweepSpec
    from scene_sim.studies.scene.sweep import run_sweep

    per_rep = len(scenario_source()) * len(SUBJECTS)
    spec = SweepSpec.model_validate(
        {
            "name": "scale",
            "subjects": SUBJECTS,
            "run": {"reps": max(1, round(episodes / per_rep)), "concurrency": 64, "cache": "off"},
        }
    )
    t0 = time.perf_counter()
    summary = asyncio.run(run_sweep(spec, out, quiet=True))
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    return {
        "episodes": summary.simulated,
        "wall_s": round(wall, 1),
        "episodes_per_s": round(summary.simulated / wall, 1),
        "peak_rss_mib": round(peak_kib / 1024),
        "run_dir_mib": round(size / 2**20),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        print(json.dumps(inner(a.inner, a.out)))
        return
    for n in a.sizes:
        out = tempfile.mkdtemp(prefix="scene-sim-scale-")
        try:
            res = subprocess.run(
                [sys.executable, __file__, "--inner", str(n), "--out", out], capture_output=True, text=True, check=True
            )
            print(res.stdout.strip().splitlines()[-1], flush=True)
        finally:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
