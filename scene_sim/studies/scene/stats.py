"""Statistics of SCENE (seed section 5; definitions in DESIGN.md).

* **Repair**: a subject FACE_SAVE_REPAIR after sanction ``s`` at a tick no
  later than ``tick(s) + window`` (default 3). Episode level: 1 when any
  sanction of the episode was repaired, 0 when none was, undefined (None)
  without a sanction; the share of sanctioned episodes with a repair gets a
  Wilson 95% CI, per subject model and per sanction type. Also the
  sanction-level rate (share of sanctions repaired).
* **Adaptation**: ``x_e`` persona demonstrations before the subject's first
  breach, ``y_e`` the share of the subject's later messages and reactions
  that are breaches (undefined, so excluded, when it has none). Spearman
  rho(x, y) per subject model with a seeded percentile bootstrap 95% CI over
  episodes.
* **Opposing pairs**: compliance per norm pole, the share of the subject's
  labelled messages and reactions not labelled BREACH.
* **Fidelity**: share of episodes with a persona breach, share of breached
  episodes with any sanction, share of breached episodes whose sanction
  matched the assigned modality; VALID / PARTIAL / INVALID counts.

Headline figures use VALID episodes only; ``with_partial`` repeats them
over VALID + PARTIAL; fidelity rates use every episode (they qualify the
episodes, so excluding the failures would hide them).

Everything runs on compact :class:`~scene_sim.studies.scene.collect.EpisodeSummary`
records and numpy arrays; 100,000 episodes take well under a second.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scene_sim.studies.scene.collect import EpisodeSummary

__all__ = [
    "Z95",
    "RhoResult",
    "cohen_kappa",
    "compute_metrics",
    "episode_repair",
    "rate",
    "spearman_bootstrap",
    "spearman_rho",
    "wilson_ci",
]

#: The standard normal quantile for a two-sided 95% interval.
Z95 = 1.959963984540054

VALIDITIES = ("VALID", "PARTIAL", "INVALID")


def wilson_ci(k: int, n: int, *, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for ``k`` successes in ``n`` trials (None when ``n`` is 0).

    Matches ``statsmodels.stats.proportion.proportion_confint(k, n, method="wilson")``.
    """
    if n <= 0:
        return None
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return lo, hi


def rate(k: int, n: int) -> dict[str, Any]:
    """``{"rate", "ci", "n"}`` for ``k`` of ``n`` (rate and ci null when ``n`` is 0)."""
    ci = wilson_ci(k, n)
    return {"rate": (k / n) if n else None, "ci": list(ci) if ci else None, "n": int(n)}


def episode_repair(
    sanction_marks: Sequence[tuple[int, int]], repair_marks: Sequence[tuple[int, int]], window: int = 3
) -> tuple[int | None, int]:
    """Episode-level repair and the number of repaired sanctions.

    A sanction ``s`` is repaired when a subject repair comes after it in the
    chat (greater turn id) at a tick no later than ``tick(s) + window``.

    Args:
        sanction_marks: ``(tick, turn_id)`` of each sanction.
        repair_marks: ``(tick, turn_id)`` of each subject repair.
        window: the repair window in ticks.

    Returns:
        ``(repaired, sanctions_repaired)``: ``repaired`` is 1/0, or None without a sanction.

    """
    if not sanction_marks:
        return None, 0
    done = 0
    for s_tick, s_id in sanction_marks:
        limit = s_tick + window
        if any(r_id > s_id and r_tick <= limit for r_tick, r_id in repair_marks):
            done += 1
    return (1 if done else 0), done


# ---------------------------------------------------------------------------
# Spearman rho and its bootstrap
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RhoResult:
    """Spearman rho with its bootstrap CI.

    Attributes:
        value: rho (None when undefined: fewer than 3 episodes, or x or y constant).
        ci: percentile bootstrap interval (None when undefined).
        n: episodes used.
        n_boot: resamples drawn.
        degenerate: resamples where rho was undefined (a constant x or y), left out of the percentiles.

    """

    value: float | None
    ci: tuple[float, float] | None
    n: int
    n_boot: int = 0
    degenerate: int = 0

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "ci", "n"}`` for metrics.json."""
        return {"value": self.value, "ci": list(self.ci) if self.ci else None, "n": self.n}


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(values, return_inverse=True)
    return inv.reshape(-1), len(uniq)


def _rho_from_counts(counts: np.ndarray, xc: np.ndarray, yc: np.ndarray, kx: int, ky: int) -> np.ndarray:
    """Spearman rho of each row of ``counts`` (multiplicities of the distinct (x, y) pairs).

    Ranks are average ranks (ties share the mean of their positions), as in
    ``scipy.stats.spearmanr``; rho is the Pearson correlation of the ranks.
    Computed from count tables, so the cost is rows x pairs, not rows x episodes.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim == 1:
        counts = counts[None, :]
    n = counts.sum(axis=1)
    pairs = counts.shape[1]
    onehot_x = np.zeros((pairs, kx))
    onehot_x[np.arange(pairs), xc] = 1.0
    onehot_y = np.zeros((pairs, ky))
    onehot_y[np.arange(pairs), yc] = 1.0
    nx = counts @ onehot_x  # episodes per x value, per row (exact: integer sums)
    ny = counts @ onehot_y
    rank_x = np.cumsum(nx, axis=1) - (nx - 1.0) / 2.0  # average rank of each x value
    rank_y = np.cumsum(ny, axis=1) - (ny - 1.0) / 2.0
    mean = (n + 1.0) / 2.0
    dx = rank_x - mean[:, None]
    dy = rank_y - mean[:, None]
    var_x = (nx * dx * dx).sum(axis=1)
    var_y = (ny * dy * dy).sum(axis=1)
    cov = (counts * dx[:, xc] * dy[:, yc]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cov / np.sqrt(var_x * var_y)
    rho[(var_x <= 1e-12 * n * n * n) | (var_y <= 1e-12 * n * n * n)] = np.nan
    return np.clip(rho, -1.0, 1.0)


def _pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Distinct (x, y) pairs in lexicographic order, their multiplicities and value codes."""
    xcode, kx = _codes(x)
    ycode, ky = _codes(y)
    key = xcode.astype(np.int64) * ky + ycode
    uniq, mult = np.unique(key, return_counts=True)
    return uniq // ky, uniq % ky, mult, kx, ky


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman rho of ``x`` and ``y`` (None with fewer than 3 points or a constant variable)."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.size < 3 or xa.size != ya.size:
        return None
    xc, yc, mult, kx, ky = _pairs(xa, ya)
    value = float(_rho_from_counts(mult, xc, yc, kx, ky)[0])
    return None if math.isnan(value) else value


def spearman_bootstrap(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int | Sequence[int] | np.random.SeedSequence | None = 0,
    alpha: float = 0.05,
    chunk_cells: int = 4_000_000,
) -> RhoResult:
    """Spearman rho with a seeded percentile bootstrap CI over episodes.

    A resample draws ``n`` episodes with replacement. Episodes with the same
    ``(x, y)`` are interchangeable for rho, so a resample is drawn as the
    multiplicities of the distinct pairs, ``rng.multinomial(n, m / n)``
    (``m`` the pairs' counts, pairs in lexicographic ``(x, y)`` order): the
    same distribution as resampling indices, at a cost of ``n_boot x
    distinct pairs`` instead of ``n_boot x n``. Each resample is ranked (average
    ranks) from its count tables; rho is the Pearson correlation of the
    ranks. Resamples with a constant x or y are left out of the percentiles
    (counted in ``degenerate``).

    Args:
        x: demonstrations before the first breach, per episode.
        y: later breach share, per episode.
        n_boot: resamples (>= 2000 for reported figures).
        seed: seed of ``numpy.random.default_rng``.
        alpha: 1 - confidence level.
        chunk_cells: resamples are drawn in chunks of at most this many cells.

    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    n = int(xa.size)
    if n < 3 or n != ya.size:
        return RhoResult(None, None, n)
    xc, yc, mult, kx, ky = _pairs(xa, ya)
    value = float(_rho_from_counts(mult, xc, yc, kx, ky)[0])
    if math.isnan(value):
        return RhoResult(None, None, n)
    rng = np.random.default_rng(seed)
    pvals = mult / n
    rows = max(1, chunk_cells // max(1, len(mult)))
    out = np.empty(n_boot)
    done = 0
    while done < n_boot:
        take = min(rows, n_boot - done)
        counts = rng.multinomial(n, pvals, size=take)
        out[done : done + take] = _rho_from_counts(counts, xc, yc, kx, ky)
        done += take
    finite = out[np.isfinite(out)]
    if finite.size == 0:
        return RhoResult(value, None, n, n_boot, n_boot)
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return RhoResult(value, (float(lo), float(hi)), n, n_boot, int(n_boot - finite.size))


# ---------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa between two label sequences (None when undefined: no items or chance agreement is 1)."""
    if len(a) != len(b) or not a:
        return None
    cats = sorted(set(a) | set(b))
    idx = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(cats), len(cats)))
    for u, v in zip(a, b, strict=True):
        table[idx[u], idx[v]] += 1
    n = table.sum()
    po = np.trace(table) / n
    pe = float((table.sum(axis=1) * table.sum(axis=0)).sum() / (n * n))
    if pe >= 1.0 - 1e-12:
        return None
    return float((po - pe) / (1 - pe))


# ---------------------------------------------------------------------------
# Metrics over a run
# ---------------------------------------------------------------------------


def _model_seed(seed: int, model: str) -> list[int]:
    return [int(seed), zlib.crc32(model.encode("utf-8"))]


@dataclass
class _Columns:
    """Episode summaries as numpy columns (built once)."""

    model: np.ndarray
    validity: np.ndarray
    repaired: np.ndarray  # -1 undefined, 0, 1
    sanctions: np.ndarray
    sanctions_repaired: np.ndarray
    sanction_type: np.ndarray
    norm: np.ndarray
    x: np.ndarray
    y: np.ndarray  # nan undefined
    labelled: np.ndarray
    compliant: np.ndarray
    persona_breach: np.ndarray
    breached: np.ndarray
    delivered: np.ndarray
    shape: np.ndarray
    models: list[str]
    sanction_names: list[str]
    norm_names: list[str]


def _columns(summaries: Sequence[EpisodeSummary], window: int) -> _Columns:
    n = len(summaries)
    models: dict[str, int] = {}
    sanctions: dict[str, int] = {}
    norms: dict[str, int] = {}
    vcode = {v: i for i, v in enumerate(VALIDITIES)}
    ints = np.zeros((12, n), dtype=np.int64)
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    for i, s in enumerate(summaries):
        if s.sanction_marks:
            rep, done = episode_repair(s.sanction_marks, s.repair_marks, window)
        else:
            rep, done = None, 0
        ints[0, i] = models.setdefault(s.subject, len(models))
        ints[1, i] = vcode.get(s.validity, 2)
        ints[2, i] = -1 if rep is None else rep
        ints[3, i] = s.sanctions
        ints[4, i] = done
        ints[5, i] = sanctions.setdefault(s.sanction, len(sanctions))
        ints[6, i] = norms.setdefault(s.norm, len(norms))
        ints[7, i] = s.labelled_actions
        ints[8, i] = s.compliant_actions
        ints[9, i] = s.persona_breach
        ints[10, i] = s.breaches
        ints[11, i] = s.shape_match
        if s.breaches and s.y_actions and s.x_e is not None:
            x[i] = s.x_e
            y[i] = s.y_breaches / s.y_actions
    breached = ints[10] > 0
    return _Columns(
        model=ints[0],
        validity=ints[1],
        repaired=ints[2],
        sanctions=ints[3],
        sanctions_repaired=ints[4],
        sanction_type=ints[5],
        norm=ints[6],
        x=x,
        y=y,
        labelled=ints[7],
        compliant=ints[8],
        persona_breach=ints[9].astype(bool),
        breached=breached,
        delivered=breached & (ints[3] > 0),
        shape=breached & (ints[11] > 0),
        models=list(models),
        sanction_names=list(sanctions),
        norm_names=list(norms),
    )


def _headline(
    c: _Columns, mask: np.ndarray, model: str, *, n_boot: int, seed: int, norm_partner: Mapping[str, str]
) -> dict[str, Any]:
    sanctioned = mask & (c.repaired >= 0)
    k = int((c.repaired[sanctioned] == 1).sum())
    n = int(sanctioned.sum())
    repair = rate(k, n)
    repair["sanction_level"] = rate(int(c.sanctions_repaired[mask].sum()), int(c.sanctions[mask].sum()))
    by_sanction: dict[str, Any] = {}
    for j, name in enumerate(c.sanction_names):
        m = sanctioned & (c.sanction_type == j)
        if (mask & (c.sanction_type == j)).any():
            by_sanction[name] = rate(int((c.repaired[m] == 1).sum()), int(m.sum()))
    defined = mask & ~np.isnan(c.y)
    rho = spearman_bootstrap(c.x[defined], c.y[defined], n_boot=n_boot, seed=_model_seed(seed, model))
    rho_d = rho.to_dict()
    rho_d["breached"] = int((mask & c.breached).sum())
    rho_d["n_boot"] = rho.n_boot  # resamples behind the CI (0 when rho is undefined)
    pairs: dict[str, Any] = {}
    for j, name in enumerate(c.norm_names):
        m = mask & (c.norm == j)
        if not m.any():
            continue
        lab = int(c.labelled[m].sum())
        ok = int(c.compliant[m].sum())
        pairs[name] = {
            "compliance": (ok / lab) if lab else None,
            "n": lab,
            "ci": list(ci) if (ci := wilson_ci(ok, lab)) else None,
            "episodes": int(m.sum()),
            "partner": norm_partner.get(name),
        }
    return {"repair": repair, "repair_by_sanction": by_sanction, "rho": rho_d, "pairs": pairs}


def _share(k: int, n: int) -> float | None:
    return (k / n) if n else None


def compute_metrics(
    summaries: Sequence[EpisodeSummary],
    *,
    repair_window: int = 3,
    n_boot: int = 2000,
    seed: int = 0,
    norm_partner: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` object for a run (shape in DESIGN.md, plus a few extra keys).

    Per subject model: ``episodes`` and the ``valid`` / ``partial`` /
    ``invalid`` counts; ``repair`` (with an extra ``sanction_level`` rate),
    ``repair_by_sanction``, ``rho`` and ``pairs`` over VALID episodes;
    ``fidelity`` over all episodes; and ``with_partial`` holding repair,
    repair_by_sanction, rho and pairs over VALID + PARTIAL episodes. Null
    where undefined.

    Args:
        summaries: one per episode.
        repair_window: ticks after a sanction in which a repair counts.
        n_boot: bootstrap resamples for rho.
        seed: bootstrap seed (each model's stream is seeded by ``[seed, crc32(model)]``).
        norm_partner: norm -> its opposing pole (added to ``pairs`` entries).

    """
    c = _columns(summaries, repair_window)
    partner = dict(norm_partner or {})
    out: dict[str, Any] = {}
    for i, model in enumerate(c.models):
        mine = c.model == i
        valid = mine & (c.validity == 0)
        partial = mine & (c.validity == 1)
        breached = mine & c.breached
        nb = int(breached.sum())
        entry: dict[str, Any] = {
            "episodes": int(mine.sum()),
            "valid": int(valid.sum()),
            "partial": int(partial.sum()),
            "invalid": int((mine & (c.validity == 2)).sum()),
        }
        head = _headline(c, valid, model, n_boot=n_boot, seed=seed, norm_partner=partner)
        entry.update(head)
        entry["fidelity"] = {
            "persona_breach": _share(int((mine & c.persona_breach).sum()), int(mine.sum())),
            "sanction_delivered": _share(int((breached & c.delivered).sum()), nb),
            "shape_match": _share(int((breached & c.shape).sum()), nb),
            "breached_episodes": nb,
        }
        entry["with_partial"] = _headline(c, valid | partial, model, n_boot=n_boot, seed=seed, norm_partner=partner)
        out[model] = entry
    return {"models": out}
