"""Seed 004 Table 9's columns for a run, plus retention and parse failures.

Per culture: scenarios, dialogues kept, average turns (AT), average words
per turn (AW), % of intents with cultural context (CI).

Averages are over the kept dialogues (the paper's data set after filtering).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from scene_sim.records import RecordFile
from scene_sim.studies.clca.intents import kept_dialogues

__all__ = ["PAPER_TABLE9", "format_table9", "table9"]

#: Seed 004 Table 9 (scenarios, kept, AT, AW, CI %), for comparison.
PAPER_TABLE9 = {
    "China": (225, 107, 6.37, 77.45, 45.38),
    "Germany": (208, 85, 6.92, 76.42, 31.87),
    "UK": (193, 143, 7.04, 75.48, 29.52),
    "Mexico": (221, 105, 6.10, 79.14, 53.21),
    "Japan": (209, 69, 5.36, 74.74, 33.30),
}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def table9(out: Path) -> dict[str, Any]:
    """The run's Table 9, per culture and overall."""
    scenarios: dict[str, int] = defaultdict(int)
    for r in RecordFile(out / "scenarios.jsonl"):
        scenarios[r["culture"]] += 1
    rejected: dict[str, int] = defaultdict(int)
    for r in RecordFile(out / "rejected.jsonl"):
        rejected[r["culture"]] += 1
    played: dict[str, int] = defaultdict(int)
    culture_of: dict[str, str] = {}
    for r in RecordFile(out / "dialogues.jsonl"):
        played[r["culture"]] += 1
        culture_of[r["id"]] = r["culture"]
    judged: dict[str, int] = defaultdict(int)
    judge_failures: dict[str, int] = defaultdict(int)
    for r in RecordFile(out / "judgements.jsonl"):
        c = culture_of.get(r["dialogue_id"], r.get("culture", "?"))
        judged[c] += 1
        judge_failures[c] += int(r.get("parse_failures", 0))
    kept = kept_dialogues(out)
    cultural: dict[str, list[int]] = defaultdict(list)
    intent_failures: dict[str, int] = defaultdict(int)
    kept_ids = {d.id for d in kept}
    for r in RecordFile(out / "intents.jsonl"):
        if r["dialogue_id"] in kept_ids:
            c = culture_of.get(r["dialogue_id"], "?")
            cultural[c].append(int(r.get("cultural_reason") is not None))
            intent_failures[c] += int(r.get("parse_failures", 0))
    by: dict[str, list[Any]] = defaultdict(list)
    for d in kept:
        by[d.culture].append(d)

    def row(cs: list[str]) -> dict[str, Any]:
        ds = [d for c in cs for d in by[c]]
        turns = [len(d.turns) for d in ds]
        words = [len(t.text.split()) for d in ds for t in d.turns]
        flags = [f for c in cs for f in cultural[c]]
        n_judged = sum(judged[c] for c in cs)
        return {
            "scenarios": sum(scenarios[c] for c in cs),
            "rejected": sum(rejected[c] for c in cs),
            "dialogues": sum(played[c] for c in cs),
            "judged": n_judged,
            "kept": len(ds),
            "retention": round(len(ds) / n_judged, 4) if n_judged else None,
            "avg_turns": _mean([float(t) for t in turns]),
            "avg_words_per_turn": _mean([float(w) for w in words]),
            "cultural_intents_pct": round(100 * sum(flags) / len(flags), 2) if flags else None,
            "judge_parse_failures": sum(judge_failures[c] for c in cs),
            "intent_parse_failures": sum(intent_failures[c] for c in cs),
        }

    cultures = sorted(set(scenarios) | set(rejected) | set(played), key=lambda c: (c not in PAPER_TABLE9, c))
    return {"cultures": {c: row([c]) for c in cultures}, "total": row(cultures)}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def format_table9(t9: dict[str, Any]) -> str:
    """A plain-text table with the paper's row beside each culture."""
    head = (
        f"{'culture':<10}{'scenarios':>10}{'kept':>6}{'AT':>7}{'AW':>8}{'CI %':>8}{'retention':>11}"
        "   paper (sc/kept/AT/AW/CI)"
    )
    lines = [head, "-" * len(head)]
    for name, r in [*t9["cultures"].items(), ("total", t9["total"])]:
        paper = PAPER_TABLE9.get(name)
        ref = "/".join(_fmt(x) for x in paper) if paper else ""
        ret = f"{100 * r['retention']:.1f}%" if r["retention"] is not None else "-"
        lines.append(
            f"{name:<10}{r['scenarios']:>10}{r['kept']:>6}{_fmt(r['avg_turns']):>7}{_fmt(r['avg_words_per_turn']):>8}"
            f"{_fmt(r['cultural_intents_pct']):>8}{ret:>11}   {ref}"
        )
    return "\n".join(lines)
