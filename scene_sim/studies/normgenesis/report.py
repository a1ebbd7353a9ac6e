"""The analysis report: ``report.md`` and a plot of the repair-sequence distributions per language."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scene_sim.rundir import atomic_write_text
from scene_sim.studies.normgenesis.records import RQ_CRITERIA, TYPES

__all__ = ["plot_sequences", "render_report", "write_report"]

_TOP = 8


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def plot_sequences(patterns: dict[str, Any], path: Path) -> Path | None:
    """One bar chart per language of its most frequent V2R sequences (None when there are none)."""
    langs = [lang for lang, e in patterns["languages"].items() if e["v2r"].get("sequences")]
    if not langs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(langs), figsize=(5.5 * len(langs), 3.8), squeeze=False)
    for ax, lang in zip(axes[0], langs, strict=True):
        seqs = list(patterns["languages"][lang]["v2r"]["sequences"].items())[:_TOP]
        total = sum(patterns["languages"][lang]["v2r"]["sequences"].values())
        labels = [s for s, _ in seqs][::-1]
        shares = [c / total for _, c in seqs][::-1]
        ax.barh(labels, shares, color="#4C72B0")
        ax.set_title(f"{lang}: V2R sequences after the violation (n={total})", fontsize=9)
        ax.set_xlabel("share of V2R dialogues")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_report(patterns: dict[str, Any], plot: str | None, rejected: int, agreement: dict[str, Any] | None) -> str:
    """The report's Markdown."""
    paper = patterns["paper"]
    lines = ["# NormGenesis: analysis", "", f"Dialogues: {patterns['dialogues']}; rejected items: {rejected}.", ""]
    lines += [
        "## Dialogues and repair",
        "",
        "| lang | " + " | ".join(f"n {t}" for t in TYPES) + " | multi-step repair |",
    ]
    lines.append("|---" * (len(TYPES) + 2) + "|")
    for lang, e in patterns["languages"].items():
        cells = [str(e[t]["n"]) for t in TYPES] + [_fmt(e["v2r"]["multi_step_repair"])]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += ["", f"Paper: more than {paper['multi_step_repair_min']:.0%} of V2R dialogues use multi-step repair.", ""]
    lines += ["## Refinement (RQ) beside the paper's Table 4", ""]
    lines.append(
        "| lang | n | mean rounds | " + " | ".join(f"{c} before -> after" for c in RQ_CRITERIA) + " | paper LQ |"
    )
    lines.append("|---" * (len(RQ_CRITERIA) + 4) + "|")
    rows = [*patterns["languages"].items(), ("all", {"refinement": patterns["refinement"]})]
    for lang, e in rows:
        ref = e["refinement"]
        rq = [f"{_fmt(ref['rq_before'][c])} -> {_fmt(ref['rq_after'][c])}" for c in RQ_CRITERIA]
        p = paper["linguistic_quality"].get(lang)
        paper_cell = f"{p[0]:.3f} -> {p[1]:.3f}" if p else "-"
        lines.append(f"| {lang} | {ref['n']} | {_fmt(ref['mean_rounds'])} | " + " | ".join(rq) + f" | {paper_cell} |")
    lines += ["", f"Paper: {paper['mean_rounds']} refinement rounds on average.", ""]
    lines += ["## Most frequent V2R sequences", ""]
    for lang, e in patterns["languages"].items():
        seqs = list(e["v2r"]["sequences"].items())[:_TOP]
        lines.append(f"- **{lang}**: " + (", ".join(f"`{s}` ({c})" for s, c in seqs) or "none"))
    if plot:
        lines += ["", f"![V2R sequences per language]({plot})"]
    if agreement:
        lines += [
            "",
            "## LLM-human agreement (Pearson r of DQ scores)",
            "",
            "| lang | r | n | paper |",
            "|---|---|---|---|",
        ]
        for lang, a in agreement["by_language"].items():
            lines.append(f"| {lang} | {_fmt(a['r'])} | {a['n']} | {_fmt(paper['human_r'].get(lang))} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, patterns: dict[str, Any], rejected: int, agreement: dict[str, Any] | None) -> Path:
    """Write ``report.md`` and ``plots/sequences.png`` into ``out``; returns the report's path."""
    plot = plot_sequences(patterns, out / "plots" / "sequences.png")
    text = render_report(patterns, "plots/sequences.png" if plot else None, rejected, agreement)
    atomic_write_text(out / "report.md", text)
    return out / "report.md"
