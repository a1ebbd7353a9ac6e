"""``normgenesis analyze``: repair patterns, sequence counts and RQ means, as in ``patterns.json``.

Definitions (``DESIGN.md``, NormGenesis contracts):

* the *violator* of a dialogue is the speaker of its first ``violates`` turn;
* a V2R dialogue uses *multi-step repair* when the violator, after that turn,
  uses at least two distinct repair acts among APO, EMP, JUS, SUG; the share is
  over all V2R dialogues of the language (one without a violating turn counts
  as not multi-step);
* a dialogue's *sequence* is the reaction labels of all turns after the first
  violating turn, NR dropped, consecutive repeats collapsed, joined with ``>``
  (dialogues without a violating turn, or with nothing after it, have none);
* RQ *before* is the round-0 scores of a record, *after* its last round's; means
  and mean rounds are over dialogue records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scene_sim.studies.normgenesis.records import REPAIR_ACTS, RQ_CRITERIA, TYPES

__all__ = ["PAPER", "analyze_records", "is_multi_step", "repair_sequence"]

#: The seed's reported numbers (Table 4 and the V2R result), set beside ours in the report.
PAPER: dict[str, Any] = {
    "mean_rounds": 1.2,
    "linguistic_quality": {"ko": [3.589, 4.910], "zh": [3.603, 4.926]},
    "multi_step_repair_min": 0.85,
    "human_r": {"ko": 0.928, "zh": 0.945},
}


def _first_violation(turns: Sequence[Mapping[str, Any]]) -> int | None:
    return next((i for i, t in enumerate(turns) if t.get("adherence") == "violates"), None)


def repair_sequence(turns: Sequence[Mapping[str, Any]]) -> str | None:
    """The reaction sequence after the first violating turn (None when there is none, or nothing after it)."""
    first = _first_violation(turns)
    if first is None:
        return None
    seq: list[str] = []
    for t in turns[first + 1 :]:
        label = t.get("reaction")
        if label == "NR" or not label:
            continue
        if not seq or seq[-1] != label:
            seq.append(str(label))
    return ">".join(seq) or None


def is_multi_step(turns: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the violator uses at least two distinct repair acts after the first violating turn."""
    first = _first_violation(turns)
    if first is None:
        return False
    violator = turns[first].get("speaker")
    acts = {t.get("reaction") for t in turns[first + 1 :] if t.get("speaker") == violator}
    return len(acts & set(REPAIR_ACTS)) >= 2


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _refinement(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    before: dict[str, list[float]] = {c: [] for c in RQ_CRITERIA}
    after: dict[str, list[float]] = {c: [] for c in RQ_CRITERIA}
    rounds: list[float] = []
    for rec in records:
        ref = rec.get("refinement") or {}
        scores = ref.get("scores") or []
        if not scores:
            continue
        rounds.append(float(ref.get("rounds", 0)))
        for c in RQ_CRITERIA:
            before[c].append(float(scores[0][c]))
            after[c].append(float(scores[-1][c]))
    return {
        "n": len(rounds),
        "mean_rounds": _mean(rounds),
        "rq_before": {c: _mean(v) for c, v in before.items()},
        "rq_after": {c: _mean(v) for c, v in after.items()},
    }


def analyze_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``patterns.json`` for dialogue records."""
    recs = list(records)
    by_lang: dict[str, list[Mapping[str, Any]]] = {}
    for rec in recs:
        by_lang.setdefault(str(rec["lang"]), []).append(rec)
    languages: dict[str, Any] = {}
    for lang in sorted(by_lang):
        rows = by_lang[lang]
        entry: dict[str, Any] = {}
        for kind in TYPES:
            of_kind = [r for r in rows if r.get("type") == kind]
            stats: dict[str, Any] = {"n": len(of_kind)}
            if kind == "v2r":
                multi = [is_multi_step(r["turns"]) for r in of_kind]
                stats["multi_step_repair"] = round(sum(multi) / len(multi), 4) if multi else None
                counts = Counter(s for s in (repair_sequence(r["turns"]) for r in of_kind) if s)
                stats["sequences"] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
            entry[kind] = stats
        entry["refinement"] = _refinement(rows)
        languages[lang] = entry
    return {"dialogues": len(recs), "languages": languages, "refinement": _refinement(recs), "paper": PAPER}
