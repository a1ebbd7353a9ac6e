from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.inter_rater import cohens_kappa as sm_kappa
from statsmodels.stats.proportion import proportion_confint

from scene_sim.studies.scene.collect import EpisodeSummary
from scene_sim.studies.scene.stats import (
    cohen_kappa,
    compute_metrics,
    episode_repair,
    rate,
    spearman_bootstrap,
    spearman_rho,
    wilson_ci,
)


# -- Wilson ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 17, 100, 1000])
def test_wilson_matches_statsmodels(n: int) -> None:
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        if k < 0:
            continue
        lo, hi = wilson_ci(k, n)
        ref_lo, ref_hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert lo == pytest.approx(ref_lo, abs=1e-12)
        assert hi == pytest.approx(ref_hi, abs=1e-12)


def test_wilson_and_rate_undefined_without_trials() -> None:
    assert wilson_ci(0, 0) is None
    assert rate(0, 0) == {"rate": None, "ci": None, "n": 0}
    r = rate(3, 4)
    assert r["rate"] == 0.75 and r["n"] == 4 and r["ci"][0] < 0.75 < r["ci"][1]


# -- Spearman -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_spearman_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    x = rng.integers(0, 8, n)  # heavy ties, like demonstration counts
    y = np.round(rng.random(n) * 4) / 4 - 0.03 * x * (seed % 2)
    assert spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_undefined_cases() -> None:
    assert spearman_rho([1, 2], [3, 4]) is None  # fewer than 3
    assert spearman_rho([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]) is None  # constant x
    res = spearman_bootstrap([2, 2, 2], [0.0, 0.5, 1.0])
    assert res.value is None and res.ci is None and res.n == 3


def _reference_bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The documented procedure, one resample at a time, ranked by scipy."""
    pairs = sorted(set(zip(x.tolist(), y.tolist(), strict=True)))
    mult = np.array([sum(1 for a, b in zip(x, y, strict=True) if (a, b) == p) for p in pairs])
    px = np.array([p[0] for p in pairs])
    py = np.array([p[1] for p in pairs])
    n = len(x)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        counts = rng.multinomial(n, mult / n)
        xs, ys = np.repeat(px, counts), np.repeat(py, counts)
        if len(set(xs)) < 2 or len(set(ys)) < 2:
            continue
        stats.append(scipy.stats.spearmanr(xs, ys).statistic)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def test_bootstrap_equals_reference_loop_same_seed() -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(0, 6, 60)
    y = np.clip(np.round((rng.random(60) - 0.08 * x) * 5) / 5, 0, 1)
    res = spearman_bootstrap(x, y, n_boot=2000, seed=11)
    ref = _reference_bootstrap(x, y, 2000, 11)
    assert res.ci == pytest.approx(ref, abs=1e-9)
    assert res.value == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_bootstrap_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 10, 250)
    y = np.round(rng.random(250) * 6) / 6 - 0.04 * x
    res = spearman_bootstrap(x, y, n_boot=4000, seed=0)
    ref = scipy.stats.bootstrap(
        (x, y),
        lambda a, b: scipy.stats.spearmanr(a, b).statistic,
        paired=True,
        vectorized=False,
        n_resamples=4000,
        method="percentile",
        random_state=1,
    ).confidence_interval
    assert res.ci[0] == pytest.approx(ref.low, abs=0.03)
    assert res.ci[1] == pytest.approx(ref.high, abs=0.03)
    assert res.ci[0] < res.value < res.ci[1]


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 80), rng.random(80)
    a = spearman_bootstrap(x, y, seed=5)
    b = spearman_bootstrap(x, y, seed=5)
    c = spearman_bootstrap(x, y, seed=6)
    assert a == b
    assert a.ci != c.ci


def test_bootstrap_on_many_episodes() -> None:
    # its speed target (100,000 episodes in under 3 s) is benchmarks/timings.py bootstrap
    rng = np.random.default_rng(1)
    n = 20_000
    x = rng.integers(0, 25, n)
    later = rng.integers(1, 9, n)
    y = rng.binomial(later, 0.4) / later
    res = spearman_bootstrap(x, y, n_boot=2000, seed=0)
    assert res.n == n and res.ci is not None and res.ci[0] <= res.value <= res.ci[1]


# -- repair window --------------------------------------------------------------------------------------------
def test_repair_window_boundaries() -> None:
    sanction = [(2, 10)]
    assert episode_repair(sanction, [(5, 14)], window=3) == (1, 1)  # tick(s) + 3 counts
    assert episode_repair(sanction, [(6, 14)], window=3) == (0, 0)  # tick(s) + 4 does not
    assert episode_repair(sanction, [(6, 14)], window=4) == (1, 1)  # configurable
    assert episode_repair(sanction, [(2, 9)], window=3) == (0, 0)  # before the sanction
    assert episode_repair([], [(2, 9)], window=3) == (None, 0)  # no sanction: undefined
    two = [(1, 5), (4, 12)]
    assert episode_repair(two, [(5, 13)], window=3) == (1, 1)  # repairs the second only
    assert episode_repair(two, [(4, 13)], window=3) == (1, 2)  # after both, within both windows


# -- kappa ----------------------------------------------------------------------------------------------------
def test_cohen_kappa_matches_statsmodels() -> None:
    rng = np.random.default_rng(2)
    cats = ["DEMONSTRATION", "BREACH", "NONE", "SANCTION"]
    a = [cats[i] for i in rng.integers(0, 4, 300)]
    b = [x if rng.random() < 0.7 else cats[int(rng.integers(0, 4))] for x in a]
    table = np.zeros((4, 4))
    for u, v in zip(a, b, strict=True):
        table[sorted(cats).index(u), sorted(cats).index(v)] += 1
    assert cohen_kappa(a, b) == pytest.approx(sm_kappa(table).kappa, abs=1e-12)
    assert cohen_kappa(["NONE"] * 5, ["NONE"] * 5) is None
    assert cohen_kappa([], []) is None


# -- metrics --------------------------------------------------------------------------------------------------
def _summary(eid: str, **kw: object) -> EpisodeSummary:
    base: dict[str, object] = dict(
        episode_id=eid, subject="scripted/m", event="e", norm="concise_answer_norm", elicitor="el",
        sanction="explicit_callout", precedent=0, rep=0, seed=0, end_reason="max_turns", validity="VALID",
        demonstrations=2, breaches=0, sanctions=0, repairs=0, sanction_marks=(), repair_marks=(), x_e=None,
        y_breaches=0, y_actions=0, subject_actions=3, labelled_actions=3, compliant_actions=3,
        persona_breach=False, shape_match=False,
    )  # fmt: skip
    base.update(kw)
    return EpisodeSummary(**base)  # type: ignore[arg-type]


def test_compute_metrics_headline_excludes_invalid_and_reports_partial_separately() -> None:
    rows = [
        # sanctioned, repaired at +3
        _summary("a", breaches=1, sanctions=1, repairs=1, sanction_marks=((2, 5),), repair_marks=((5, 8),),
                 x_e=1, y_breaches=0, y_actions=2, labelled_actions=3, compliant_actions=2, shape_match=True),
        # sanctioned, repair at +4: not repaired
        _summary("b", breaches=2, sanctions=1, repairs=1, sanction_marks=((2, 5),), repair_marks=((6, 8),),
                 x_e=3, y_breaches=1, y_actions=2, labelled_actions=3, compliant_actions=1, shape_match=True),
        # no sanction: no repair value; breached, no later action: no rho value
        _summary("c", breaches=1, x_e=0, y_breaches=0, y_actions=0, labelled_actions=1, compliant_actions=0),
        # partial: counts only in with_partial
        _summary("d", validity="PARTIAL", breaches=1, sanctions=1, repairs=1, sanction_marks=((1, 3),),
                 repair_marks=((1, 4),), x_e=0, y_breaches=1, y_actions=1, persona_breach=True),
        # invalid: excluded from headline and with_partial, but counted in fidelity
        _summary("e", validity="INVALID", breaches=1, sanctions=0, x_e=2, y_breaches=1, y_actions=1,
                 persona_breach=True, labelled_actions=5, compliant_actions=0),
    ]  # fmt: skip
    m = compute_metrics(rows, n_boot=2000, seed=0)["models"]["scripted/m"]
    assert (m["episodes"], m["valid"], m["partial"], m["invalid"]) == (5, 3, 1, 1)
    assert m["repair"]["n"] == 2 and m["repair"]["rate"] == 0.5
    assert m["repair"]["ci"] == list(wilson_ci(1, 2))
    assert m["repair"]["sanction_level"]["n"] == 2
    assert m["repair_by_sanction"] == {"explicit_callout": rate(1, 2)}
    assert m["rho"]["n"] == 2 and m["rho"]["value"] is None  # two defined episodes: undefined
    assert m["pairs"]["concise_answer_norm"]["n"] == 7
    assert m["pairs"]["concise_answer_norm"]["compliance"] == pytest.approx(3 / 7)
    wp = m["with_partial"]
    assert wp["repair"]["n"] == 3 and wp["repair"]["rate"] == pytest.approx(2 / 3)
    assert wp["rho"]["n"] == 3
    f = m["fidelity"]
    assert f["persona_breach"] == pytest.approx(2 / 5)
    assert f["breached_episodes"] == 5
    assert f["sanction_delivered"] == pytest.approx(3 / 5)
    assert f["shape_match"] == pytest.approx(2 / 5)
    window4 = compute_metrics(rows, repair_window=4)["models"]["scripted/m"]
    assert window4["repair"]["rate"] == 1.0


def test_compute_metrics_nulls_when_undefined() -> None:
    m = compute_metrics([_summary("a")])["models"]["scripted/m"]
    assert m["repair"] == {"rate": None, "ci": None, "n": 0, "sanction_level": {"rate": None, "ci": None, "n": 0}}
    assert m["rho"]["value"] is None and m["rho"]["ci"] is None and m["rho"]["n"] == 0
    assert m["fidelity"]["sanction_delivered"] is None and m["fidelity"]["shape_match"] is None


# -- the resample count is pinned: reported CIs rest on >= 2000 bootstrap resamples --------------------------
def _adapting(n: int, model: str = "scripted/m") -> list[EpisodeSummary]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        x = int(rng.integers(0, 5))
        later = int(rng.integers(1, 6))
        yb = int(rng.binomial(later, max(0.05, 0.8 - 0.15 * x)))
        out.append(_summary(f"e{i}", subject=model, breaches=1, x_e=x, y_breaches=yb, y_actions=later))
    return out


def test_bootstrap_defaults_draw_at_least_2000_resamples() -> None:
    import inspect

    from scene_sim.studies.scene.analysis import analyze_run, write_outputs
    from scene_sim.studies.scene.stats import _model_seed

    for fn in (spearman_bootstrap, compute_metrics, write_outputs, analyze_run):
        assert inspect.signature(fn).parameters["n_boot"].default >= 2000, fn.__name__
    rows = _adapting(60)
    x = [s.x_e for s in rows]
    y = [s.y_breaches / s.y_actions for s in rows]
    assert spearman_bootstrap(x, y).n_boot >= 2000
    rho = compute_metrics(rows)["models"]["scripted/m"]["rho"]
    assert rho["n_boot"] >= 2000 and rho["value"] is not None
    # the reported CI is the one 2000 resamples give, not 200
    seed = _model_seed(0, "scripted/m")
    assert rho["ci"] == list(spearman_bootstrap(x, y, n_boot=2000, seed=seed).ci)
    assert rho["ci"] != list(spearman_bootstrap(x, y, n_boot=200, seed=seed).ci)
