"""The report's plots draw what the metrics say: nothing for undefined values, every label inside its frame."""

from __future__ import annotations

from typing import Any

import pytest

from scene_sim.studies.scene.report import ReportInfo, build_figures, make_plots

pytest.importorskip("matplotlib")


def _rate(rate: float | None, n: int) -> dict[str, Any]:
    return {"rate": rate, "ci": None if rate is None else [max(0.0, rate - 0.1), min(1.0, rate + 0.1)], "n": n}


def _model(rho: float | None, pairs: dict[str, Any]) -> dict[str, Any]:
    return {
        "episodes": 10,
        "valid": 10,
        "partial": 0,
        "invalid": 0,
        "repair": _rate(0.5, 4),
        "repair_by_sanction": {"explicit_callout": _rate(0.5, 4), "mocking_imitation": _rate(None, 0)},
        "rho": {"value": rho, "ci": None if rho is None else [rho - 0.2, rho + 0.2], "n": 7 if rho is not None else 1},
        "pairs": pairs,
        "fidelity": {"persona_breach": 0.0, "sanction_delivered": 1.0, "shape_match": 1.0},
    }


PAIRS = [("terse", "verbose")]


def _metrics() -> dict[str, Any]:
    full = {"terse": {"compliance": 0.75, "n": 8}, "verbose": {"compliance": 0.5, "n": 4}}
    # the second model never acted under 'verbose': n = 0, compliance undefined
    empty_pole = {"terse": {"compliance": 0.6, "n": 5}, "verbose": {"compliance": None, "n": 0}}
    return {
        "models": {
            "scripted/learner": _model(-0.4, full),
            "scripted/silent": _model(None, empty_pole),
            "scripted/always-message": _model(None, full),
        }
    }


def test_rho_forest_undefined_labels_lie_inside_the_frame() -> None:
    fig = build_figures(_metrics(), ReportInfo(pairs=PAIRS))["rho_forest.png"]
    fig.canvas.draw()
    ax = fig.axes[0]
    frame = ax.get_window_extent()
    undefined = [t for t in ax.texts if t.get_text() == "undefined"]
    assert len(undefined) == 2
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    for text in undefined:
        x, y = text.xy
        assert x0 <= x <= x1 and y0 <= y <= y1
        box = text.get_window_extent()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert box.x0 > ax.transData.transform((0, 0))[0]  # beside the zero line, not across it


def test_rho_forest_with_every_rho_undefined_keeps_one_row_per_model() -> None:
    metrics = {"models": {f"m{i}": _model(None, {}) for i in range(4)}}
    fig = build_figures(metrics)["rho_forest.png"]
    fig.canvas.draw()
    ax = fig.axes[0]
    frame = ax.get_window_extent()
    rows = sorted(t.xy[1] for t in ax.texts if t.get_text() == "undefined")
    assert rows == [0, 1, 2, 3]
    for text in ax.texts:
        box = text.get_window_extent()
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_compliance_pairs_draw_no_bar_for_an_empty_pole() -> None:
    fig = build_figures(_metrics(), ReportInfo(pairs=PAIRS))["compliance_pairs.png"]
    ax = fig.axes[0]
    bars = [(round(p.get_x() + p.get_width() / 2, 6), p.get_height()) for p in ax.patches]
    width = 0.8 / 3
    silent_verbose = round(1 + (1 - 1) * width, 6)  # pole 1 ('verbose'), model 1 ('scripted/silent')
    assert silent_verbose not in {x for x, _ in bars}
    assert sorted(h for _, h in bars) == sorted([0.75, 0.5, 0.6, 0.75, 0.5])  # five defined poles, no 0.0
    assert {t.get_text() for t in ax.get_legend().get_texts()} == set(_metrics()["models"])


def test_repair_by_sanction_draws_no_bar_for_an_undefined_rate() -> None:
    ax = build_figures(_metrics())["repair_by_sanction.png"].axes[0]
    assert sorted(p.get_height() for p in ax.patches) == [0.5, 0.5, 0.5]


def test_make_plots_gives_four_pngs() -> None:
    images = make_plots(_metrics(), ReportInfo(pairs=PAIRS))
    assert set(images) == {"repair_rate.png", "rho_forest.png", "compliance_pairs.png", "repair_by_sanction.png"}
    assert all(png.startswith(b"\x89PNG") for png in images.values())
