"""``clca adapt``: the Table 19 culture adaptation of each generic task into ``scenarios.jsonl``.

The model returns the task in the same JSON schema; an answer is accepted
when it parses, keeps exactly two participants with a name, age, gender,
occupation, goal and secret each, and gives both participants names that
differ from every original name. A refused answer is re-queried (bounded,
the project's one re-query loop); when the re-queries are spent the item
is recorded in ``rejected.jsonl`` with the reason and the raw answers, so
a re-run does not ask again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scene_sim.actions import extract_json
from scene_sim.context import RunContext
from scene_sim.jobs import JobsSummary
from scene_sim.prompts import load_template
from scene_sim.records import RecordFile
from scene_sim.studies.clca.calls import ask, is_scripted, item_seed
from scene_sim.studies.clca.cultures import Culture
from scene_sim.studies.clca.policies import scripted_adapt
from scene_sim.studies.clca.records import Scenario, Task
from scene_sim.studies.clca.steps import Output, Runner

__all__ = ["check_adapted", "make_worker", "run_adapt", "scenario_id"]


def scenario_id(culture: Culture, task: Task) -> str:
    """The adapted scenario's id: ``<culture>-<task id>``."""
    return f"{culture.name.lower()}-{task.id}"


def check_adapted(task: Task, culture: Culture, data: Any) -> tuple[Scenario | None, str | None]:
    """Validate an adaptation: ``(scenario, None)`` or ``(None, problem)``."""
    if not isinstance(data, dict):
        return None, "expected a JSON object"
    parts = data.get("participants")
    if not isinstance(parts, list) or len(parts) != 2:
        return None, "expected exactly two participants"
    try:
        scenario = Scenario.model_validate(
            {
                "id": scenario_id(culture, task),
                "culture": culture.name,
                "source_id": task.id,
                "setting": data.get("setting") or "",
                "participants": parts,
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return None, f"{where}: {err['msg']}"
    old = {p.name.strip().lower() for p in task.participants}
    new = [p.name.strip().lower() for p in scenario.participants]
    if any(n in old for n in new):
        return None, "the participants' names must be changed to names of the culture"
    if new[0] == new[1]:
        return None, "the two participants need different names"
    return scenario, None


def make_worker(
    context: RunContext | None, *, seed: int, model: str, temperature: float | None
) -> Callable[[tuple[Culture, Task]], Awaitable[Output]]:
    """The work of one (culture, task) pair: its scenario or its rejection, written by the driver."""
    template = load_template("clca/adapt")

    async def compute(item: tuple[Culture, Task]) -> Output:
        culture, task = item
        generic = {"setting": task.setting, "participants": [p.model_dump() for p in task.participants]}
        system, user = template.render(culture=culture.name, scenario=json.dumps(generic, ensure_ascii=False))
        s = item_seed(seed, "adapt", culture.name, task.id)

        def read(response: Any) -> tuple[Scenario | None, str | None]:
            data = response.parsed
            if data is None:
                try:
                    data = extract_json(str(response.text or ""))
                except ValueError as exc:
                    return None, str(exc)
            return check_adapted(task, culture, data)

        asked = await ask(
            model,
            context,
            system,
            user,
            read,
            seed=s,
            role="adapter",
            scripted=lambda: scripted_adapt(task, culture, s),
            temperature=temperature,
            max_tokens=1200,
        )
        if asked.value is not None:
            record = {**asked.value.model_dump(), "model": model, "attempts": len(asked.raw)}
            return Output(records=(("scenarios.jsonl", record),))
        rejected = {
            "id": scenario_id(culture, task),
            "culture": culture.name,
            "source_id": task.id,
            "reason": asked.problem,
            "raw": list(asked.raw),
            "model": model,
        }
        return Output(records=(("rejected.jsonl", rejected),))

    return compute


async def run_adapt(
    out: Path,
    tasks: list[Task],
    cultures: list[Culture],
    model: str,
    *,
    seed: int,
    context: RunContext | None,
    concurrency: int = 16,
    quiet: bool = False,
    budget_usd: float | None = None,
    temperature: float | None = 0.7,
    runner: Runner | None = None,
) -> JobsSummary:
    """Adapt every (culture, task) pair not yet in ``scenarios.jsonl`` or ``rejected.jsonl``."""
    done = RecordFile(out / "scenarios.jsonl").ids("id") | RecordFile(out / "rejected.jsonl").ids("id")
    todo = [(c, t) for c in cultures for t in tasks if scenario_id(c, t) not in done]
    return await (runner or Runner()).run(
        out,
        todo,
        "scene_sim.studies.clca.adapt:make_worker",
        {"seed": seed, "model": model, "temperature": temperature},
        context=context,
        concurrency=concurrency,
        budget_usd=budget_usd,
        label="scenarios",
        already_done=len(done),
        quiet=quiet,
        name=lambda it: scenario_id(*it),
        counts=lambda _it: not is_scripted(model),
    )
