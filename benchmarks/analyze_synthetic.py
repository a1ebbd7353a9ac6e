"""Benchmark: statistics and report for N synthetic labelled episodes.

Two modes:

* ``memory`` (default): N compact :class:`~scene_sim.studies.scene.collect.EpisodeSummary`
  records are generated in memory (not timed), then the statistics
  (``compute_metrics``: Wilson CIs, repair windows, Spearman rho with a
  2000-resample bootstrap per model, compliance per pole, fidelity) and the
  file writing (``episodes.csv``, ``metrics.json``, ``report.md``,
  ``report.html``, four PNG plots) are timed. This is the hot path of
  ``analyze_run`` once episodes are labelled and summarised.
* ``rundir``: N synthetic episodes are written to a temporary run directory
  as minimal event logs plus labels files (not timed), then ``analyze_run``
  is timed end to end (listing and reading the files, statistics, every
  output file). The labels files carry the stream summary a judged episode
  gets (``summary``, see :func:`scene_sim.studies.scene.collect.summary_record`),
  computed here from each synthetic event log exactly as the judge step
  does, so analysis reads one labels file per episode and no event log.
  The first pass reads every labels file and writes the labels folder's
  summary index (``labels/.summaries.jsonl``); the timed second pass reads
  the index and checks each labels file's stamp. Both passes are printed.
  ``--slow`` times the reference path instead (every event log re-read).

Peak memory: ``tracemalloc`` peak of the timed section (a second, untimed
pass, because tracing slows Python down) and the process's peak RSS.

Usage::

    .venv/bin/python benchmarks/analyze_synthetic.py            # 100,000 episodes, memory mode
    .venv/bin/python benchmarks/analyze_synthetic.py --mode rundir            # 100,000 episodes on disk
    .venv/bin/python benchmarks/analyze_synthetic.py --mode rundir -n 10000 --slow
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from scene_sim.rundir import RunDir
from scene_sim.studies.scene.analysis import analyze_run, index_labels, write_outputs
from scene_sim.studies.scene.collect import EpisodeSummary, summarize, summary_record
from scene_sim.studies.scene.judge import Episode, labels_from_dicts
from scene_sim.studies.scene.stats import compute_metrics
from scene_sim.studies.scene.taxonomy import load_taxonomy

MODELS = (
    "anthropic/claude-opus-4-7", "google/gemini-3.1-pro", "openai/qwen2.5-72b", "openai/llama-3.3-70b",
    "openai/mistral-medium-3.1", "hf/google/gemma-3-27b-it",
)  # fmt: skip


def synthetic_summaries(n: int, seed: int = 0) -> list[EpisodeSummary]:
    """N plausible episode summaries: per-model repair propensity, adaptation slope, validity mix."""
    tax = load_taxonomy()
    tuples = tax.valid_tuples
    rng = np.random.default_rng(seed)
    model = rng.integers(0, len(MODELS), n)
    pick = rng.integers(0, len(tuples), n)
    demos = rng.poisson(3.0, n)
    breaches = rng.binomial(4, 0.35, n)
    first = rng.integers(0, 4, n)
    x = np.minimum(first, demos)
    later = rng.integers(0, 9, n)
    slope = np.array([-0.08, -0.06, 0.0, 0.0, 0.01, -0.01])[model]
    p_breach = np.clip(0.45 + slope * x, 0.02, 0.98)
    y_b = rng.binomial(later, p_breach)
    sanctions = np.where(breaches > 0, rng.binomial(3, 0.7, n), 0)
    p_repair = np.array([0.84, 0.8, 0.66, 0.62, 0.58, 0.72])[model]
    validity = rng.choice(np.array(["VALID", "PARTIAL", "INVALID"]), n, p=[0.9, 0.07, 0.03])
    labelled = rng.integers(1, 12, n)
    compliant = rng.binomial(labelled, 0.8)
    tick = rng.integers(1, 8, (n, 3))
    gap = rng.integers(0, 6, (n, 3))
    repaired = rng.random((n, 3)) < p_repair[:, None]
    out = []
    for i in range(n):
        t = tuples[pick[i]]
        k = int(sanctions[i])
        marks = tuple((int(tick[i, j]), 10 + 3 * j) for j in range(k))
        reps = tuple((int(tick[i, j] + gap[i, j]), 11 + 3 * j) for j in range(k) if repaired[i, j])
        b = int(breaches[i])
        out.append(
            EpisodeSummary(
                episode_id=f"syn{i:07d}",
                subject=MODELS[model[i]],
                event=t.event,
                norm=t.norm,
                elicitor=t.elicitor,
                sanction=t.sanction,
                precedent=t.precedent,
                rep=i % 5,
                seed=i,
                end_reason="max_turns",
                validity=str(validity[i]),
                demonstrations=int(demos[i]),
                breaches=b,
                sanctions=k,
                repairs=len(reps),
                sanction_marks=marks,
                repair_marks=reps,
                x_e=int(x[i]) if b else None,
                y_breaches=int(y_b[i]) if b else 0,
                y_actions=int(later[i]) if b else 0,
                subject_actions=int(labelled[i]),
                labelled_actions=int(labelled[i]),
                compliant_actions=int(compliant[i]),
                persona_breach=bool(rng.random() < 0.02),
                shape_match=bool(k and rng.random() < 0.72),
                judge="google/gemini-3-flash",
                judge_source="llm",
            )
        )
    return out


def synthetic_run_dir(path: Path, summaries: list[EpisodeSummary]) -> RunDir:
    """Minimal event logs and labels files realising each summary's streams (for the rundir mode)."""
    rd = RunDir(path)
    rd.episodes_dir.mkdir(parents=True, exist_ok=True)
    rd.labels_dir.mkdir(parents=True, exist_ok=True)
    for s in summaries:
        rows: list[tuple[int, str, str]] = []  # (tick, actor, label)
        rows += [(1, "Ana", "DEMONSTRATION")] * min(s.demonstrations, s.x_e if s.x_e is not None else 99)
        if s.breaches:
            rows.append((1, "Sam", "BREACH"))
            rows += [(2, "Sam", "BREACH")] * s.y_breaches + [(2, "Sam", "NONE")] * (s.y_actions - s.y_breaches)
            for tick, _ in s.sanction_marks:
                rows.append((max(2, tick), "Ben", "SANCTION"))
            rows += [(max(2, tick), "Sam", "FACE_SAVE_REPAIR") for tick, _ in s.repair_marks]
        rows.sort(key=lambda r: r[0])
        events: list[dict[str, Any]] = [
            {"seq": 0, "turn": 0, "kind": "episode_start", "episode_id": s.episode_id, "scenario_id": "syn",
             "tuple": {"event": s.event, "norm": s.norm, "elicitor": s.elicitor, "sanction": s.sanction,
                       "precedent": s.precedent},
             "subject": "Sam", "models": {"subject": s.subject, "judge": s.judge}, "seed": s.seed, "rep": s.rep}
        ]  # fmt: skip
        labels = []
        for tid, (tick, actor, label) in enumerate(rows, start=1):
            events.append({"seq": len(events), "turn": tick, "kind": "action", "actor": actor, "action": "message",
                           "content": "x", "target_turn_id": None, "turn_id": tid, "parse_failure": False})  # fmt: skip
            labels.append({"turn_id": tid, "actor": actor, "label": label})
        events.append({"seq": len(events), "turn": 8, "kind": "episode_end", "reason": "max_turns"})
        (rd.episodes_dir / f"{s.episode_id}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        doc = {"turn_labels": labels, "episode_metrics": {"sanction_shape_match": s.shape_match},
               "fidelity": {"label": s.validity, "justification": "synthetic"},
               "judge": {"model": s.judge, "source": "llm"}}  # fmt: skip
        # what the judge step stores (analysis.label_episode): the summary of the streams under these labels
        episode = Episode.from_events(events, episode_id=s.episode_id)
        doc["summary"] = summary_record(summarize(episode, labels_from_dicts(labels)), labels)
        (rd.labels_dir / f"{s.episode_id}.json").write_text(json.dumps(doc))
        index_labels(rd, s.episode_id, doc)  # as the sweep does after each labels write
    return rd


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--episodes", type=int, default=100_000)
    parser.add_argument("--mode", choices=("memory", "rundir"), default="memory")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the second, traced pass")
    parser.add_argument("--out", help="output folder (default: a temporary one)")
    parser.add_argument("--slow", action="store_true", help="rundir: ignore the stored summaries, re-read every log")
    parser.add_argument("--reuse", action="store_true", help="rundir: analyse the run directory already in --out")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    summaries = synthetic_summaries(args.episodes)
    gen_s = time.perf_counter() - t0
    tax = load_taxonomy()
    out = Path(args.out or tempfile.mkdtemp(prefix="scene-sim-bench-"))
    print(f"mode={args.mode} episodes={args.episodes:,} models={len(MODELS)} n_boot={args.n_boot} out={out}")
    print(f"generate summaries (untimed): {gen_s:.2f} s")

    def timed() -> dict[str, float]:
        if args.mode == "memory":
            t = time.perf_counter()
            compute_metrics(summaries, n_boot=args.n_boot)
            stats_s = time.perf_counter() - t
            t = time.perf_counter()
            write_outputs(out, summaries, n_boot=args.n_boot, taxonomy=tax, plots=not args.no_plots)
            return {"statistics": stats_s, "statistics + files": time.perf_counter() - t}
        t = time.perf_counter()
        cpu = time.process_time()
        asyncio.run(
            analyze_run(
                RunDir(out), n_boot=args.n_boot, taxonomy=tax, plots=not args.no_plots, stored_summaries=not args.slow
            )
        )
        wall = time.perf_counter() - t
        # CPU time of this process (forked readers not included): what the work costs without other load
        return {"analyze_run (read + statistics + files)": wall, "  of which CPU time here": time.process_time() - cpu}

    if args.mode == "rundir" and not args.reuse:
        t = time.perf_counter()
        synthetic_run_dir(out, summaries)
        print(f"write synthetic run directory (untimed): {time.perf_counter() - t:.2f} s")
    first = timed()  # warm-up: imports (matplotlib), caches
    for k, v in first.items():
        print(f"first pass, imports included: {k}: {v:.2f} s")
    times = timed()
    for k, v in times.items():
        print(f"{k}: {v:.2f} s")
    if not args.no_tracemalloc:
        tracemalloc.start()
        timed()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"peak traced Python memory of the timed section: {peak / 2**20:.1f} MiB")
    print(f"peak RSS of the process: {_peak_rss_mib():.1f} MiB")
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    print("files: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
