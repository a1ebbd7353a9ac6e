"""Human ratings (CSV) against the model's dialogue-quality scores: Pearson r per language.

The CSV has an ``id`` column (the dialogue record's id) and one or more score
columns: any of the six DQ criteria, or ``score`` / ``overall`` for one overall
rating. Several rows per id (several raters) are averaged. The model's score of
a dialogue is the mean of its DQ scores over the criteria the CSV has (all six
for an overall rating).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scene_sim.errors import SceneSimError
from scene_sim.studies.normgenesis.records import DQ_CRITERIA

__all__ = ["agreement", "pearson_r", "read_ratings"]

_OVERALL = ("score", "overall")


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r (None when fewer than two pairs or either side is constant)."""
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def read_ratings(path: str | Path) -> tuple[dict[str, float], tuple[str, ...]]:
    """Mean human rating per id, and the criteria the ratings cover.

    Raises:
        SceneSimError: a missing file, no ``id`` column, no score column, or a non-numeric score (row named).

    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SceneSimError(f"{path}: file not found") from None
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in reader.fieldnames or []]
    if "id" not in fields:
        raise SceneSimError(f"{path}: needs an 'id' column")
    cols = [f for f in fields if f in DQ_CRITERIA or f in _OVERALL]
    if not cols:
        raise SceneSimError(f"{path}: needs a score column ('score', 'overall' or one of {', '.join(DQ_CRITERIA)})")
    sums: dict[str, list[float]] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        try:
            values = [float(row[c]) for c in cols if (row.get(c) or "").strip()]
        except ValueError:
            raise SceneSimError(f"{path}:{line}: scores must be numbers") from None
        if values:
            sums.setdefault(row["id"].strip(), []).append(sum(values) / len(values))
    criteria = tuple(c for c in cols if c in DQ_CRITERIA) or DQ_CRITERIA
    return {k: sum(v) / len(v) for k, v in sums.items()}, criteria


def agreement(
    records: Iterable[Mapping[str, Any]], human: Mapping[str, float], criteria: Sequence[str]
) -> dict[str, Any]:
    """Pearson r per language between human ratings and the model's DQ scores."""
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    matched = set()
    for rec in records:
        dq = rec.get("dq")
        if rec["id"] not in human or not dq:
            continue
        matched.add(rec["id"])
        model = sum(float(dq[c]) for c in criteria) / len(criteria)
        xs, ys = pairs.setdefault(str(rec["lang"]), ([], []))
        xs.append(human[rec["id"]])
        ys.append(model)
    by_lang = {}
    for lang, (xs, ys) in sorted(pairs.items()):
        r = pearson_r(xs, ys)
        by_lang[lang] = {"r": round(r, 4) if r is not None else None, "n": len(xs)}
    return {"by_language": by_lang, "criteria": list(criteria), "unmatched_ids": len(set(human) - matched)}
