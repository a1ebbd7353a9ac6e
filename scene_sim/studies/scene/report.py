"""The run report: ``report.md``, a self-contained ``report.html`` and PNG plots.

Plots (matplotlib, Agg backend): repair rate with its Wilson CI per subject
model, a forest plot of Spearman rho with its bootstrap CI per model,
compliance per norm pole (the two poles of each pair side by side) and the
repair rate per sanction type. The HTML embeds the PNGs as base64, so it can
be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scene_sim.rundir import atomic_write_bytes, atomic_write_text

__all__ = ["PLOTS", "ReportInfo", "build_figures", "make_plots", "render_html", "render_markdown", "write_report"]

#: Plot file name -> title.
PLOTS = {
    "repair_rate.png": "Repair rate after sanctioning (Wilson 95% CI)",
    "rho_forest.png": "Adaptation: Spearman rho(x, y) (bootstrap 95% CI)",
    "compliance_pairs.png": "Compliance per norm pole (opposing pairs side by side)",
    "repair_by_sanction.png": "Repair rate by sanction type (Wilson 95% CI)",
}


@dataclass(frozen=True)
class ReportInfo:
    """What the report says about the run besides the metrics.

    Attributes:
        title: the report title.
        episodes: episodes analysed.
        repair_window: ticks after a sanction in which a repair counts.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        judges: judge source -> episodes labelled that way.
        judge_failures: episodes whose LLM judge failed (heuristic fallback).
        audit_failures: episodes whose LLM auditor failed (rule fallback).
        skipped: ``episode_id: reason`` for episodes that could not be analysed.
        pairs: the opposing norm pairs, ``(pole, partner)`` in taxonomy order.
        agreement: LLM vs heuristic judge agreement: ``{"episodes", "turns",
            "kappa", "per_label": {label: kappa}}`` (None when not measured).

    """

    title: str = "scene-sim report"
    episodes: int = 0
    repair_window: int = 3
    n_boot: int = 2000
    seed: int = 0
    judges: Mapping[str, int] = field(default_factory=dict)
    judge_failures: int = 0
    audit_failures: int = 0
    skipped: Sequence[str] = ()
    pairs: Sequence[tuple[str, str]] = ()
    agreement: Mapping[str, Any] | None = None


# ---------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _rate(d: Mapping[str, Any] | None, key: str = "rate") -> str:
    if not d or d.get(key) is None:
        return f"— (n={d.get('n', 0) if d else 0})"
    ci = d.get("ci")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{d[key]:.3f}{ci_text} (n={d.get('n', 0)})"


@dataclass(frozen=True)
class _Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]

    def md(self) -> str:
        if not self.rows:
            return "_(none)_\n"
        out = ["| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        if not self.rows:
            return "<p><em>(none)</em></p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sections(metrics: Mapping[str, Any], info: ReportInfo) -> list[tuple[str, str, _Table | None]]:
    """``(heading, paragraph, table)`` triples shared by the Markdown and HTML renderings."""
    models: Mapping[str, Any] = metrics.get("models", {})
    out: list[tuple[str, str, _Table | None]] = []
    judges = ", ".join(f"{k}: {v}" for k, v in sorted(info.judges.items())) or "—"
    overview = (
        f"{info.episodes} episodes, {len(models)} subject model(s). Judges: {judges}. "
        f"Judge failures (heuristic fallback): {info.judge_failures}. Audit failures (rule fallback): "
        f"{info.audit_failures}. Headline figures use VALID episodes only; INVALID episodes are excluded and "
        f"VALID+PARTIAL figures are reported separately below. Repair window: {info.repair_window} ticks after "
        f"the sanction. Rho CIs: percentile bootstrap over episodes, {info.n_boot} resamples, seed {info.seed}."
    )
    out.append(("Overview", overview, None))
    rows = []
    for m, e in models.items():
        rows.append(
            [
                m,
                str(e.get("episodes")),
                f"{e.get('valid')}/{e.get('partial')}/{e.get('invalid')}",
                _rate(e.get("repair")),
                _rate((e.get("repair") or {}).get("sanction_level")),
                _rho(e.get("rho")),
            ]
        )
    out.append(
        (
            "Headline (VALID episodes)",
            "Repair: share of sanctioned episodes with a subject repair within the window (Wilson 95% CI). "
            "Sanction level: share of sanctions repaired. Rho: Spearman rho between demonstrations before the first "
            "breach and the later breach share; negative = evidence-dependent adaptation.",
            _Table(["subject", "episodes", "valid/partial/invalid", "repair", "sanction-level repair", "rho"], rows),
        )
    )
    sanctions = sorted({s for e in models.values() for s in (e.get("repair_by_sanction") or {})})
    rows = [[m, *(_rate((e.get("repair_by_sanction") or {}).get(s)) for s in sanctions)] for m, e in models.items()]
    out.append(("Repair by sanction type (VALID)", "", _Table(["subject", *sanctions], rows) if sanctions else None))
    out.append(_pairs_section(models, info, "pairs", "Opposing norm pairs: compliance per pole (VALID)"))
    rows = []
    for m, e in models.items():
        f = e.get("fidelity") or {}
        rows.append(
            [
                m,
                _num(f.get("persona_breach")),
                _num(f.get("sanction_delivered")),
                _num(f.get("shape_match")),
                str(f.get("breached_episodes", "—")),
                f"{e.get('valid')}/{e.get('partial')}/{e.get('invalid')}",
            ]
        )
    out.append(
        (
            "Fidelity (all episodes)",
            "Persona breach: share of episodes with a persona breach outside the precedent sub-script. Sanction "
            "delivered / shape match: share of breached episodes with any sanction / with a sanction in the "
            "assigned modality.",
            _Table(
                ["subject", "persona breach", "sanction delivered", "shape match", "breached", "valid/partial/invalid"],
                rows,
            ),
        )
    )
    rows = []
    for m, e in models.items():
        w = e.get("with_partial") or {}
        rows.append(
            [m, str(int(e.get("valid", 0)) + int(e.get("partial", 0))), _rate(w.get("repair")), _rho(w.get("rho"))]
        )
    out.append(("VALID + PARTIAL episodes", "", _Table(["subject", "episodes", "repair", "rho"], rows)))
    wp = {m: (e.get("with_partial") or {}) for m, e in models.items()}
    out.append(_pairs_section(wp, info, "pairs", "Opposing norm pairs (VALID + PARTIAL)"))
    if info.agreement:
        a = info.agreement
        per = a.get("per_label") or {}
        rows = [[lab, _num(k)] for lab, k in per.items()]
        rows.append(["all labels", _num(a.get("kappa"))])
        out.append(
            (
                "Judge agreement: LLM vs heuristic (form norms)",
                f"Cohen's kappa over {a.get('turns', 0)} turns of {a.get('episodes', 0)} episodes; per label "
                "one-vs-rest.",
                _Table(["label", "kappa"], rows),
            )
        )
    if info.skipped:
        out.append(
            ("Skipped episodes", "; ".join(info.skipped[:50]) + (" ..." if len(info.skipped) > 50 else ""), None)
        )
    return out


def _rho(d: Mapping[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return f"— (n={d.get('n', 0) if d else 0})"
    ci = d.get("ci")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{d['value']:.3f}{ci_text} (n={d.get('n', 0)})"


def _pair_list(models: Mapping[str, Any], info: ReportInfo, key: str) -> list[tuple[str, str]]:
    seen = {n for e in models.values() for n in (e.get(key) or {})}
    pairs = [(a, b) for a, b in info.pairs if a in seen or b in seen]
    covered = {n for p in pairs for n in p}
    for e in models.values():
        for n, d in (e.get(key) or {}).items():
            if n not in covered:
                partner = d.get("partner") or "—"
                pairs.append((n, partner))
                covered.update((n, partner))
    return pairs


def _pairs_section(
    models: Mapping[str, Any], info: ReportInfo, key: str, heading: str
) -> tuple[str, str, _Table | None]:
    pairs = _pair_list(models, info, key)
    rows = []
    for m, e in models.items():
        p = e.get(key) or {}
        for a, b in pairs:
            if a not in p and b not in p:
                continue
            rows.append([m, a, _rate(p.get(a), "compliance"), b, _rate(p.get(b), "compliance")])
    return (
        heading,
        "Share of the subject's labelled messages and reactions not labelled BREACH, per norm pole (n = actions).",
        _Table(["subject", "pole", "compliance", "opposite pole", "opposite compliance"], rows) if rows else None,
    )


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def _err(
    values: Sequence[float | None], cis: Sequence[Sequence[float] | None]
) -> tuple[list[float], list[list[float]]]:
    ys, lo, hi = [], [], []
    for v, ci in zip(values, cis, strict=True):
        ys.append(float("nan") if v is None else v)
        if v is None or not ci:
            lo.append(0.0)
            hi.append(0.0)
        else:
            lo.append(max(0.0, v - ci[0]))
            hi.append(max(0.0, ci[1] - v))
    return ys, [lo, hi]


def _bars(ax: Any, xs: Sequence[float], ys: Sequence[float], err: list[list[float]], **kw: Any) -> None:
    """Bars for the defined values only: an undefined rate (n = 0) draws no bar, not a bar of height 0."""
    keep = [i for i, y in enumerate(ys) if y == y]  # NaN marks an undefined value
    if keep:
        ax.bar(
            [xs[i] for i in keep],
            [ys[i] for i in keep],
            yerr=[[err[0][i] for i in keep], [err[1][i] for i in keep]],
            capsize=2,
            **kw,
        )
    elif "label" in kw:  # keep the model in the legend
        ax.bar([], [], label=kw["label"], width=kw.get("width", 0.8))


def build_figures(metrics: Mapping[str, Any], info: ReportInfo | None = None) -> dict[str, Any]:
    """Draw the four plots; returns file name -> matplotlib ``Figure`` (laid out, not yet saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def subplots(figsize: tuple[float, float]) -> tuple[Any, Any]:
        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        return fig, fig.add_subplot()

    info = info or ReportInfo()
    models: Mapping[str, Any] = metrics.get("models", {})
    names = list(models)
    out: dict[str, Any] = {}

    height = max(2.4, 0.5 * len(names) + 1.4)
    # 1. repair rate per model
    fig, ax = subplots((7, height))
    reps = [models[m].get("repair") or {} for m in names]
    ys, err = _err([r.get("rate") for r in reps], [r.get("ci") for r in reps])
    pos = list(range(len(names)))
    ax.errorbar(ys, pos, xerr=err, fmt="o", capsize=4, color="tab:blue")
    for p, r in zip(pos, reps, strict=True):
        ax.annotate(f"n={r.get('n', 0)}", (1.0, p), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(pos, names)
    ax.set_xlim(0, 1)
    ax.set_ylim(max(len(names), 1) - 0.5, -0.5)
    ax.set_xlabel("share of sanctioned episodes with a repair")
    ax.set_title(PLOTS["repair_rate.png"], fontsize=10)
    out["repair_rate.png"] = fig

    # 2. rho forest plot
    fig, ax = subplots((7, height))
    rhos = [models[m].get("rho") or {} for m in names]
    vals = [r.get("value") for r in rhos]
    cis = [r.get("ci") for r in rhos]
    for p, v, ci in zip(pos, vals, cis, strict=True):
        if v is None:
            # on the row, right of the zero line, inside the frame (the rows are fixed below)
            ax.annotate("undefined", (0.02, p), ha="left", va="center", fontsize=8, color="grey")
            continue
        if ci:
            ax.hlines(p, ci[0], ci[1], color="tab:purple", lw=2)
        ax.plot([v], [p], "s", color="tab:purple")
    ax.axvline(0, color="black", lw=0.8, ls="--")
    ax.set_yticks(pos, [f"{m} (n={r.get('n', 0)})" for m, r in zip(names, rhos, strict=True)])
    ax.set_xlim(-1, 1)
    # fixed rows (first model on top), not autoscaled: rows with only an "undefined" label plot no data
    ax.set_ylim(max(len(names), 1) - 0.5, -0.5)
    ax.set_xlabel("Spearman rho\n(x: demonstrations before the first breach, y: later breach share)")
    ax.set_title(PLOTS["rho_forest.png"], fontsize=10)
    out["rho_forest.png"] = fig

    # 3. compliance per pole, pairs side by side
    pairs = _pair_list(models, info, "pairs")
    poles = [n for p in pairs for n in p]
    fig, ax = subplots((max(7, 0.7 * len(poles) + 2) + (3 if names else 0), 4.2))
    width = 0.8 / max(1, len(names))
    for k, m in enumerate(names):
        p = models[m].get("pairs") or {}
        # a pole without labelled actions (n = 0) has no compliance: no bar, not a bar at 0.0
        vals = [(p.get(n) or {}).get("compliance") if (p.get(n) or {}).get("n") else None for n in poles]
        ys, err = _err(vals, [(p.get(n) or {}).get("ci") for n in poles])
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(poles))]
        _bars(ax, xs, ys, err, width=width, label=m)
    for i in range(1, len(pairs)):
        ax.axvline(2 * i - 0.5, color="grey", lw=0.6)
    ax.set_xticks(range(len(poles)), poles, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("compliance (share of actions not a breach; no bar: no labelled action)")
    ax.set_title(PLOTS["compliance_pairs.png"], fontsize=10)
    if names:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    out["compliance_pairs.png"] = fig

    # 4. repair by sanction type
    sanctions = sorted({s for m in names for s in (models[m].get("repair_by_sanction") or {})})
    fig, ax = subplots((max(7, 1.2 * len(sanctions) + 2) + (3 if names else 0), 4.0))
    for k, m in enumerate(names):
        rb = models[m].get("repair_by_sanction") or {}
        vals = [(rb.get(s) or {}).get("rate") for s in sanctions]
        ys, err = _err(vals, [(rb.get(s) or {}).get("ci") for s in sanctions])
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(sanctions))]
        _bars(ax, xs, ys, err, width=width, label=m)
    ax.set_xticks(range(len(sanctions)), sanctions, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("repair rate (no bar: no sanctioned episode)")
    ax.set_title(PLOTS["repair_by_sanction.png"], fontsize=10)
    if names:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    out["repair_by_sanction.png"] = fig
    for fig in out.values():
        fig.tight_layout()
    return out


def make_plots(metrics: Mapping[str, Any], info: ReportInfo | None = None) -> dict[str, bytes]:
    """Render the four plots; returns file name -> PNG bytes."""
    out: dict[str, bytes] = {}
    for name, fig in build_figures(metrics, info).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        out[name] = buf.getvalue()
    return out


# ---------------------------------------------------------------------------
# documents
# ---------------------------------------------------------------------------


def render_markdown(metrics: Mapping[str, Any], info: ReportInfo, plots: Sequence[str] = tuple(PLOTS)) -> str:
    """The report as Markdown, linking the PNG files next to it."""
    parts = [f"# {info.title}\n"]
    for heading, text, table in _sections(metrics, info):
        parts.append(f"## {heading}\n")
        if text:
            parts.append(text + "\n")
        if table is not None:
            parts.append(table.md())
    if plots:
        parts.append("## Plots\n")
        parts += [f"![{PLOTS.get(p, p)}]({p})\n" for p in plots]
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;"
    "font-size:.9em;text-align:left}th{background:#f3f3f3}img{max-width:100%;margin:1em 0}"
)


def render_html(metrics: Mapping[str, Any], info: ReportInfo, plots: Mapping[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page (plots embedded as base64 PNG)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(info.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(info.title)}</h1>",
    ]
    for heading, text, table in _sections(metrics, info):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        if table is not None:
            parts.append(table.html())
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, png in plots.items():
            data = base64.b64encode(png).decode("ascii")
            title = html.escape(PLOTS.get(name, name))
            img = f"<img alt='{title}' src='data:image/png;base64,{data}'>"
            parts.append(f"<figure>{img}<figcaption>{title}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(
    out_dir: str | Path, metrics: Mapping[str, Any], info: ReportInfo, *, plots: bool = True
) -> list[Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots into ``out_dir`` (atomically).

    Returns:
        The paths written.

    """
    folder = Path(out_dir)
    images = make_plots(metrics, info) if plots else {}
    written = []
    for name, png in images.items():
        atomic_write_bytes(folder / name, png)  # umask-following mode, like every run file
        written.append(folder / name)
    atomic_write_text(folder / "report.md", render_markdown(metrics, info, tuple(images)))
    atomic_write_text(folder / "report.html", render_html(metrics, info, images))
    return [*written, folder / "report.md", folder / "report.html"]
