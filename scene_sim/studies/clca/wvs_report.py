"""The WVS evaluation's report: numbers beside seed 004's Tables 2 / 5 / 15, and plots.

:func:`write_report` writes ``report.md`` (this run's KL, JS and accuracy
beside the paper's rows for the same model family: persona baseline,
cultural prompting, CLCA), ``per_question_divergence.png`` (KL and JS per
question) and ``answer_histograms.png`` (the subject's answer distribution
against the survey's, one panel per question). Plots use matplotlib's Agg
backend; without matplotlib the report is written without them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from scene_sim._resources import content_dir
from scene_sim.rundir import atomic_write_text

__all__ = ["model_family", "paper_rows", "plot_divergence", "plot_histograms", "write_report"]

#: (pattern on the model string, family name in the paper's tables)
_FAMILIES = (
    (r"llama[-_ ]?3\.1.*8b", "Llama3.1 8B"),
    (r"llama[-_ ]?3\.2.*3b", "Llama3.2 3B"),
    (r"llama[-_ ]?3\.2.*1b", "Llama3.2 1B"),
    (r"qwen[-_ ]?2\.5.*7b", "Qwen2.5 7B"),
    (r"qwen[-_ ]?2\.5.*1\.5b", "Qwen2.5 1.5B"),
    (r"qwen[-_ ]?2\.5.*0\.5b", "Qwen2.5 0.5B"),
    (r"mistral.*7b", "Mistral-v0.3 7B"),
)


@cache
def _reference() -> dict[str, Any]:
    return json.loads((content_dir("worlds") / "clca" / "wvs" / "paper_reference.json").read_text(encoding="utf-8"))


def model_family(subject: str) -> str | None:
    """The paper's name for the model family of ``subject`` (None when the paper has no such model)."""
    text = subject.split("?", 1)[0].lower()
    for pattern, name in _FAMILIES:
        if re.search(pattern, text):
            return name
    return None


def paper_rows(family: str, country: str) -> list[dict[str, Any]]:
    """The paper's rows for ``family``: ``{method, kl_culture, kl_avg, accuracy_avg, js_avg}`` per method."""
    ref = _reference()
    culture = {"GBR": "UK", "CHN": "China", "DEU": "Germany", "MEX": "Mexico", "JPN": "Japan"}.get(country.upper())
    rows = []
    for method in ("persona", "cultural", "clca"):
        kl = ref["kl"].get(family, {}).get(method)
        if kl is None:
            continue
        rows.append(
            {
                "method": method,
                "kl_culture": kl[ref["cultures"].index(culture)] if culture else None,
                "kl_avg": kl[-1],
                "accuracy_avg": ref["accuracy_avg"].get(family, {}).get(method),
                "js_avg": ref["js_avg"].get(family, {}).get(method),
            }
        )
    return rows


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _markdown(result: dict[str, Any], questions: Sequence[Any]) -> str:
    family = model_family(result["subject"])
    lines = [
        f"# WVS evaluation: {result['subject']} on {result['country']}",
        "",
        f"Prompting `{result['prompting']}`, answers by `{result.get('answer_mode', 'generate')}`, "
        f"{result['personas']} personas (seed {result.get('seed', 0)}) of {result.get('survey_respondents', '?')} "
        f"respondents, {len(result['questions'])} questions, epsilon {result['epsilon']:g}.",
        "",
        "| run | KL-D (this culture) | accuracy | JS-D | safeguard rate |",
        "|---|---|---|---|---|",
        f"| this run | {_fmt(result['kl'])} | {_fmt(result['accuracy'])} | {_fmt(result['js'])} | "
        f"{result['safeguard_rate']:.4f} |",
        "",
    ]
    if family:
        lines += [
            f"Seed 004's rows for {family} (Table 2 KL-D for this culture and averaged; Table 5 / 11 accuracy and "
            "Table 15 JS-D are averages over the five cultures):",
            "",
            "| paper | KL-D (culture) | KL-D (avg) | accuracy (avg) | JS-D (avg) |",
            "|---|---|---|---|---|",
        ]
        for row in paper_rows(family, result["country"]):
            lines.append(
                f"| {family} {row['method']} | {_fmt(row['kl_culture'])} | {_fmt(row['kl_avg'])} | "
                f"{_fmt(row['accuracy_avg'])} | {_fmt(row['js_avg'])} |"
            )
    else:
        lines.append("Seed 004 reports no model of this family; see its Tables 2, 5 and 15 for the others.")
    lines += ["", "## Per question", "", "| question | KL-D | JS-D | model | survey |", "|---|---|---|---|---|"]
    for q in questions:
        pq = result["per_question"][q.id]
        model = " ".join(f"{p:.2f}" for p in pq["model_dist"])
        survey = "-" if pq["survey_dist"] is None else " ".join(f"{p:.2f}" for p in pq["survey_dist"])
        lines.append(f"| {q.id} | {_fmt(pq['kl'])} | {_fmt(pq['js'])} | {model} | {survey} |")
    lines += [
        "",
        "Distributions list options 1..K, then the safeguard bin (answers that are not a valid option).",
        "Plots: `per_question_divergence.png`, `answer_histograms.png`.",
        "",
    ]
    return "\n".join(lines)


def plot_divergence(result: dict[str, Any], path: Path) -> None:
    """Bar chart of KL-D and JS-D per question."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = result["questions"]
    kl = [result["per_question"][q]["kl"] or 0.0 for q in ids]
    js = [result["per_question"][q]["js"] or 0.0 for q in ids]
    x = range(len(ids))
    fig, ax = plt.subplots(figsize=(14, 4))
    ax.bar([i - 0.2 for i in x], kl, width=0.4, label="KL-D")
    ax.bar([i + 0.2 for i in x], js, width=0.4, label="JS-D")
    ax.set_xticks(list(x), ids, rotation=90, fontsize=7)
    ax.set_ylabel("divergence")
    ax.set_title(f"{result['subject']} vs WVS-7 {result['country']} ({result['prompting']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histograms(result: dict[str, Any], path: Path) -> None:
    """One panel per question: the subject's answer distribution against the survey's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = result["questions"]
    cols = 8
    rows = (len(ids) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), squeeze=False)
    for ax, qid in zip(axes.flat, ids, strict=False):
        pq = result["per_question"][qid]
        model = pq["model_dist"]
        survey = pq["survey_dist"] or [0.0] * len(model)
        x = range(len(model))
        ax.bar([i - 0.2 for i in x], model, width=0.4, color="tab:blue")
        ax.bar([i + 0.2 for i in x], survey, width=0.4, color="tab:orange")
        ax.set_xticks(list(x), [*(str(k) for k in range(1, len(model))), "S"], fontsize=6)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(qid, fontsize=8)
    for ax in list(axes.flat)[len(ids) :]:
        ax.axis("off")
    fig.legend(["model", "survey"], loc="upper right", fontsize=8)
    fig.suptitle(f"Answers of {result['subject']} vs WVS-7 {result['country']} (S = safeguard)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(out: Path, result: dict[str, Any], questions: Sequence[Any], *, plots: bool = True) -> None:
    """Write ``report.md`` and (with ``plots``) the two plots into ``out``."""
    atomic_write_text(out / "report.md", _markdown(result, questions))
    if not plots:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # plots are optional; the numbers are in wvs_metrics.json
        return
    plot_divergence(result, out / "per_question_divergence.png")
    plot_histograms(result, out / "answer_histograms.png")
