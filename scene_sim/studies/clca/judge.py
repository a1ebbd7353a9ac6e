"""``clca filter``: the two step-1 judgements (Table 24) and the meta-judgement (Table 23) per dialogue.

Each answer is parsed from its schema (``Culture alignment: <n>`` /
``Quality: <n>`` / ``Meta label: <n>``, ``Confidence: <n>``, ``Critic: ...``;
the number or the option's words are accepted), re-queried a bounded
number of times, and recorded with its raw text. An answer that never
parses leaves that judgement's fields null and is counted in
``parse_failures``.

The discard rule of seed 004 section 4.1: a dialogue is dropped when its
meta-evaluation or its general quality is "bad" with high confidence.
"High confidence" is a setting (default: only "very confident").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from scene_sim.context import RunContext
from scene_sim.errors import SceneSimError
from scene_sim.jobs import JobsSummary
from scene_sim.prompts import load_template
from scene_sim.records import RecordFile
from scene_sim.studies.clca.calls import ask, is_scripted, item_seed
from scene_sim.studies.clca.policies import scripted_judge
from scene_sim.studies.clca.records import Choice, Dialogue, Judgement, MetaJudgement, Scenario
from scene_sim.studies.clca.steps import Output, Runner

__all__ = ["CONFIDENCES", "keep", "make_worker", "parse_judgement", "run_filter"]

CONFIDENCES = ("very confident", "confident", "not sure")
_OPTIONS = {
    "culture": ("Culture alignment", ("aligned", "not aligned")),
    "quality": ("Quality", ("good", "bad")),
    "meta": ("Meta label", ("good", "bad")),
}


def _pick(text: str, label: str, options: Sequence[str]) -> str | None:
    m = re.search(rf"{re.escape(label)}\s*[:：]\s*\**\s*([^\n]*)", text, re.IGNORECASE)
    if not m:
        return None
    value = m.group(1).strip().strip("*").strip().lower()
    num = re.match(r"<?\s*(\d+)", value)
    if num:
        k = int(num.group(1))
        return options[k - 1] if 1 <= k <= len(options) else None
    # words: the longest option first ("not aligned" before "aligned", "very confident" before "confident")
    for option in sorted(options, key=len, reverse=True):
        if value.startswith(option) or value.startswith(option.replace(" to the culture", "")):
            return option
    return None


def parse_judgement(kind: str, text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse one judge answer of ``kind``: ``(fields, None)`` or ``(None, problem)``."""
    label, options = _OPTIONS[kind]
    choice = _pick(text, label, options)
    if choice is None:
        return None, f"no valid '{label}: <1-{len(options)}>' line"
    confidence = _pick(text, "Confidence", CONFIDENCES)
    if confidence is None:
        return None, "no valid 'Confidence: <1-3>' line"
    if kind != "meta":
        return {"choice": choice, "confidence": confidence}, None
    m = re.search(r"Critic(?:ism|que)?\s*[:：]\s*(.*)", text, re.IGNORECASE | re.DOTALL)
    critic = m.group(1).strip() if m else None
    return {"label": choice, "confidence": confidence, "critic": critic or None}, None


def keep(quality: Choice, meta: MetaJudgement, high: Sequence[str]) -> bool:
    """Section 4.1: discard a high-confidence bad meta-evaluation or general quality."""
    if quality.choice == "bad" and quality.confidence in high:
        return False
    return not (meta.label == "bad" and meta.confidence in high)


def participants_text(scenario: Scenario) -> str:
    """The participants' basic information as the judge sees it (public profile only)."""
    return "; ".join(p.public() for p in scenario.participants)


def dialogue_text(dialogue: Dialogue) -> str:
    """The dialogue as ``Speaker: text`` lines."""
    return "\n".join(f"{t.speaker}: {t.text}" for t in dialogue.turns) or "(no turns)"


def make_worker(
    context: RunContext | None, *, judge: str, high_confidence: Sequence[str], seed: int
) -> Callable[[tuple[Dialogue, Scenario | None]], Awaitable[Output]]:
    """The work of one dialogue: its three judgements and the keep decision, written by the driver."""
    high_confidence = tuple(high_confidence)

    async def one(kind: str, template: str, values: dict[str, Any], dialogue: Dialogue, s: int, step1: Any) -> Any:
        system, user = load_template(template).render(**values)
        return await ask(
            judge,
            context,
            system,
            user,
            lambda r: parse_judgement(kind, str(r.text or "")),
            seed=s,
            role="judge",
            scripted=lambda: scripted_judge(kind, dialogue.turns, seed=s, step1=step1),
            temperature=0.0,
            max_tokens=300,
        )

    async def compute(item: tuple[Dialogue, Scenario | None]) -> Output:
        dialogue, scenario = item
        if scenario is None:
            raise SceneSimError(f"dialogue {dialogue.id}: scenario '{dialogue.scenario_id}' not in scenarios.jsonl")
        s = item_seed(seed, "filter", dialogue.id)
        values = {
            "culture": dialogue.culture,
            "participants": participants_text(scenario),
            "dialogue": dialogue_text(dialogue),
        }
        culture_a, quality_a = await asyncio.gather(
            one("culture", "clca/judge_culture", values, dialogue, s, None),
            one("quality", "clca/judge_quality", values, dialogue, s + 1, None),
        )
        step1 = {
            "culture_alignment": culture_a.value or {"choice": None, "confidence": None},
            "quality": quality_a.value or {"choice": None, "confidence": None},
        }
        previous = (
            f"Culture alignment: {step1['culture_alignment']['choice'] or 'unknown'} "
            f"(confidence: {step1['culture_alignment']['confidence'] or 'unknown'}); "
            f"Quality: {step1['quality']['choice'] or 'unknown'} "
            f"(confidence: {step1['quality']['confidence'] or 'unknown'})"
        )
        meta_a = await one(
            "meta",
            "clca/judge_meta",
            {"culture": dialogue.culture, "dialogue": values["dialogue"], "judgements": previous},
            dialogue,
            s + 2,
            step1,
        )
        quality = Choice.model_validate(step1["quality"])
        meta = MetaJudgement.model_validate(meta_a.value or {"label": None, "confidence": None, "critic": None})
        record = Judgement(
            dialogue_id=dialogue.id,
            culture_alignment=Choice.model_validate(step1["culture_alignment"]),
            quality=quality,
            meta=meta,
            kept=keep(quality, meta, high_confidence),
        )
        judgement = {
            **record.model_dump(),
            "culture": dialogue.culture,
            "raw": {
                "culture_alignment": list(culture_a.raw),
                "quality": list(quality_a.raw),
                "meta": list(meta_a.raw),
            },
            "parse_failures": culture_a.parse_failures + quality_a.parse_failures + meta_a.parse_failures,
            "unparsed": [
                k
                for k, a in (("culture_alignment", culture_a), ("quality", quality_a), ("meta", meta_a))
                if a.value is None
            ],
            "high_confidence": list(high_confidence),
            "judge": judge,
        }
        return Output(records=(("judgements.jsonl", judgement),))

    return compute


async def run_filter(
    out: Path,
    judge: str,
    *,
    seed: int,
    context: RunContext | None,
    high_confidence: Sequence[str] = ("very confident",),
    concurrency: int = 16,
    quiet: bool = False,
    budget_usd: float | None = None,
    runner: Runner | None = None,
) -> JobsSummary:
    """Judge every dialogue of ``dialogues.jsonl`` not yet in ``judgements.jsonl``."""
    bad = [c for c in high_confidence if c not in CONFIDENCES]
    if bad or not high_confidence:
        raise SceneSimError(f"high_confidence must be a non-empty subset of {', '.join(CONFIDENCES)}; got {bad}")
    scenarios = {r["id"]: Scenario.model_validate(r) for r in RecordFile(out / "scenarios.jsonl")}
    dialogues = [Dialogue.model_validate(r) for r in RecordFile(out / "dialogues.jsonl")]
    done = RecordFile(out / "judgements.jsonl").ids("dialogue_id")
    todo = [(d, scenarios.get(d.scenario_id)) for d in dialogues if d.id not in done]
    return await (runner or Runner()).run(
        out,
        todo,
        "scene_sim.studies.clca.judge:make_worker",
        {"judge": judge, "high_confidence": tuple(high_confidence), "seed": seed},
        context=context,
        concurrency=concurrency,
        budget_usd=budget_usd,
        label="judgements",
        already_done=len(done),
        quiet=quiet,
        name=lambda it: it[0].id,
        counts=lambda _it: not is_scripted(judge),
    )
